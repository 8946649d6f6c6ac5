"""Checks shared by the networking.istio.io kinds, as istioctl applies them.

Each check takes the ``Check`` of the object that owns the field, the field's relative
path and its value, and reports there; the rules and limits are those of
istio/istio ``pkg/config/validation`` (quoted where they are not obvious), with messages
that quote what was found.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Iterable


from ._decode import Check, describe, yaml_key
from ._duration import Duration

MILLISECOND = 1_000_000
"""Nanoseconds; Istio's ValidateDuration: "duration must be greater than 1ms", ms precision."""
MAX_REGEX_LENGTH = 1024
"""Istio approximates Envoy's re2.max_program_size by the regex length."""

# Istio's labels.IsDNS1123Label accepts upper case (DNS is case-insensitive).
_DNS_LABEL = re.compile(r"[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?")
_WILDCARD_LABEL = re.compile(r"\*|(\*|\*-)?[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~A-Za-z0-9]+")  # RFC 7230 tchar
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
PSEUDO_HEADERS = frozenset({":method", ":scheme", ":authority", ":path", ":status"})
JWT_CLAIM_PREFIX = "@request.auth.claims."

# pkg/config/protocol: parsed case-insensitively; "" means "sniff" where allowed.
PROTOCOLS = frozenset({"TCP", "UDP", "GRPC", "GRPC-WEB", "HTTP", "HTTP_PROXY", "HTTP2", "HTTPS",
                       "TLS", "MONGO", "REDIS", "MYSQL"})
HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB", "HTTP_PROXY"})
TLS_PROTOCOLS = frozenset({"HTTPS", "TLS"})


def check_oneof(c: Check, obj: object, names: Iterable[str]) -> bool:
    """A protobuf oneof: report when more than one member is set; True if it did."""
    members = tuple(names)
    keys = [yaml_key(n) for n in members if getattr(obj, n) is not None]
    if len(keys) > 1:
        allowed = ", ".join(yaml_key(n) for n in members)
        c.error(keys[1], f"only one of {allowed} may be set; found {' and '.join(keys)}")
        return True
    return False


def _under(path: str, base: str) -> bool:
    return not base or path == base or path.startswith(base + ".") or path.startswith(base + "[")


def has_errors_under(c: Check, rel: str = "") -> bool:
    """Whether an error was already reported at or below ``rel`` (to avoid follow-on noise).

    Children are decoded just before their parent's check runs, so the findings about this
    object are the newest ones; the scan stops at the first finding from outside it.
    """
    base = c.path(rel)
    for d in reversed(c.decoder.diagnostics):
        if not _under(d.path, c.base):
            return False
        if d.is_error and _under(d.path, base):
            return True
    return False


def check_port(c: Check, rel: str, number: int) -> bool:
    if 1 <= number <= 65535:
        return True
    c.error(rel, f"port number must be in the range 1..65535; found {describe(number)}")
    return False


def check_percent_int(c: Check, rel: str, value: int) -> None:
    if not 0 <= value <= 100:
        c.error(rel, f"must be between 0 and 100; found {describe(value)}")


def check_non_negative(c: Check, rel: str, value: int | None) -> None:
    if value is not None and value < 0:
        c.error(rel, f"must not be negative; found {describe(value)}")


def check_duration(c: Check, rel: str, d: Duration | None, *, zero_ok: bool = False, seconds: bool = False) -> None:
    """Istio's ValidateDuration: at least 1ms and a whole number of milliseconds."""
    if d is None or (zero_ok and d.nanos == 0):
        return
    if d.nanos < MILLISECOND:
        c.error(rel, f"must be at least 1ms; found {str(d)!r}")
    elif d.nanos % MILLISECOND:
        c.error(rel, f"only millisecond precision is supported; found {str(d)!r}")
    elif seconds and d.nanos % 1_000_000_000:
        c.error(rel, f"only whole seconds are supported; found {str(d)!r}")


@functools.lru_cache(maxsize=4096)
def regex_problem(pattern: str) -> str | None:
    """Why RE2 (the engine Envoy uses) refuses ``pattern``; None if it compiles."""
    if len(pattern) > MAX_REGEX_LENGTH:
        return f"regex is too long ({len(pattern)} characters, at most {MAX_REGEX_LENGTH})"
    import re2  # ~2.7 MB resident: only when a resource has a regex (a sidecar's idle footprint)
    options = re2.Options()
    options.log_errors = False
    try:
        re2.compile(pattern, options=options)
    except re2.error as exc:
        arg = exc.args[0] if exc.args else ""
        return arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)
    except (TypeError, ValueError) as exc:  # e.g. a NUL byte the binding refuses
        return str(exc)
    return None


def check_regex(c: Check, rel: str, pattern: str) -> None:
    if pattern == "":
        c.error(rel, "a regex match must not be empty; found string ''")
        return
    problem = regex_problem(pattern)
    if problem is not None:
        c.error(rel, f"invalid RE2 regex {pattern!r}: {problem}")


def dns_label_problem(label: str) -> str | None:
    if len(label) > 63 or not _DNS_LABEL.fullmatch(label):
        return f"label {label!r} is not a DNS-1123 label (letters, digits, '-', at most 63)"
    return None


@functools.lru_cache(maxsize=8192)
def _domain_problem(domain: str, wildcard: bool) -> str | None:
    if not domain:
        return "empty domain name not allowed"
    if len(domain) > 255:
        return f"domain name is longer than 255 characters ({len(domain)})"
    parts = domain.split(".")
    if wildcard:
        if "*" not in parts[0]:
            problem = dns_label_problem(parts[0])
            if problem:
                return problem
        elif len(parts[0]) > 63 or not _WILDCARD_LABEL.fullmatch(parts[0]):
            return f"label {parts[0]!r} is invalid; a wildcard is '*' or a '*' prefix of the first label"
        parts = parts[1:]
        if not parts:
            return None
    if parts[-1].isdigit():
        return f"top level domain {parts[-1]!r} cannot be all-numeric"
    for i, label in enumerate(parts):
        if i == len(parts) - 1 and label == "":
            return None  # a trailing dot, as in `istio.io.`
        problem = dns_label_problem(label)
        if problem:
            return problem
    return None


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def fqdn_problem(name: str) -> str | None:
    return _domain_problem(name, wildcard=False)


def wildcard_domain_problem(name: str) -> str | None:
    return _domain_problem(name, wildcard=True)


def check_wildcard_domain(c: Check, rel: str, name: str, *, allow_ip: bool = False) -> bool:
    problem = wildcard_domain_problem(name)
    if problem is None or (allow_ip and is_ip(name)):
        return True
    c.error(rel, f"invalid host {name!r}: {problem}")
    return False


def check_subset_name(c: Check, rel: str, name: str) -> None:
    if name == "":
        c.error(rel, "subset name must not be empty")
    elif dns_label_problem(name):
        c.error(rel, f"subset name must be a DNS-1123 label (letters, digits, '-'); found {describe(name)}")


def check_subnet(c: Check, rel: str, text: str) -> None:
    try:
        if text.count("/") == 1:
            ipaddress.ip_network(text, strict=False)
        else:
            ipaddress.ip_address(text)
    except ValueError:
        c.error(rel, f"must be an IP address or a CIDR block; found {describe(text)}")


def label_problem(key: str, value: str) -> str | None:
    """Kubernetes label syntax: ``[prefix/]name`` keys, values of at most 63 characters."""
    prefix, _, name = key.rpartition("/")
    if prefix and _domain_problem(prefix, wildcard=False):
        return f"label key {key!r} has an invalid prefix {prefix!r} (must be a DNS subdomain)"
    if not name or len(name) > 63 or not _QUALIFIED_NAME.fullmatch(name):
        return f"label key {key!r} is not a valid label name (alphanumerics, '-', '_', '.', at most 63)"
    if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
        return f"label value {value!r} of {key!r} is invalid (alphanumerics, '-', '_', '.', at most 63)"
    return None


def check_labels(c: Check, rel: str, labels: dict[str, str]) -> None:
    for key, value in labels.items():
        problem = label_problem(key, value)
        if problem:
            c.error(f"{rel}.{key}" if rel else key, problem)


def check_selector_labels(c: Check, rel: str, labels: dict[str, str]) -> None:
    for key, value in labels.items():
        where = f"{rel}.{key}"
        if key == "":
            c.error(where, f"an empty label key is not supported in a selector; found {key}={value}")
        elif "*" in key or "*" in value:
            c.error(where, f"wildcards are not supported in a selector; found {key}={value}")
    if not labels:
        c.warning(rel, "workload selector without labels selects every workload in the namespace")


def check_export_to(c: Check, rel: str, export_to: tuple[str, ...], *, service_entry: bool = False) -> None:
    """Visibility: '.', '*', a namespace, or (ServiceEntry only) '~'; no duplicates."""
    seen: set[str] = set()
    for i, entry in enumerate(export_to):
        where = f"{rel}[{i}]"
        if entry in seen:
            c.error(where, f"duplicate entry in exportTo; found {describe(entry)} twice")
            continue
        seen.add(entry)
        if entry not in (".", "*") and not (service_entry and entry == "~") and dns_label_problem(entry):
            allowed = "'.', '*', '~' or a namespace" if service_entry else "'.', '*' or a namespace"
            c.error(where, f"must be {allowed}; found {describe(entry)}")
    if "*" in seen and len(export_to) > 1:
        c.error(rel, "cannot have both public (*) and non-public exportTo values")
    if "~" in seen and len(export_to) > 1:
        c.error(rel, "cannot export to no one (~) and to someone")


def protocol_of(name: str | None) -> str | None:
    """Istio's protocol.Parse: case-insensitive; None when unsupported."""
    if name is None:
        return None
    upper = name.upper()
    return upper if upper in PROTOCOLS else None


def check_header_name(c: Check, rel: str, name: str, *, allow_star: bool = False) -> None:
    if name == "":
        c.error(rel, "header name must not be empty")
    elif not (allow_star and name == "*") and not _HEADER_NAME.fullmatch(name):
        c.error(rel, f"invalid header name {name!r} (RFC 7230 token characters only)")


def header_value_problem(value: str) -> str | None:
    """Envoy header values: no control characters; '%' starts a %VAR% or is doubled."""
    if _HEADER_VALUE_BAD.search(value):
        return "contains a control character"
    i = 0
    while i < len(value):
        if value[i] == "%":
            if value.startswith("%%", i):
                i += 2
                continue
            end = value.find("%", i + 1)
            if end < 0:
                return "has an unterminated '%' (write '%%' for a literal percent sign)"
            i = end + 1
        else:
            i += 1
    return None


def host_is_wildcard(name: str) -> bool:
    return name.startswith("*")


def hosts_match(a: str, b: str) -> bool:
    """Istio's host.Name.Matches: the two hosts (wildcards included) overlap."""
    if host_is_wildcard(a) and host_is_wildcard(b):
        return a[1:].endswith(b[1:]) if len(a) >= len(b) else b[1:].endswith(a[1:])
    if host_is_wildcard(a):
        return b.endswith(a[1:])
    if host_is_wildcard(b):
        return a.endswith(b[1:])
    return a == b


def host_subset_of(a: str, b: str) -> bool:
    """Istio's host.Name.SubsetOf: every name ``a`` matches is matched by ``b``."""
    if host_is_wildcard(a):
        return host_is_wildcard(b) and a[1:].endswith(b[1:])
    if not host_is_wildcard(b):
        return a == b
    return a.endswith(b[1:])


def namespaced_host_problem(host: str, *, gateway: bool) -> str | None:
    """Istio's ValidateNamespaceSlashWildcardHostname: ``ns/dnsName`` (gateways also take a
    bare ``dnsName``); ns is ``*``, ``.`` (sidecars also ``~``) or a namespace."""
    ns, slash, name = host.partition("/")
    if not slash:
        if not gateway:
            return "must be of the form <namespace>/<dnsName>"
        name = host
    elif not ns or not name:
        return "namespace and dnsName must not be empty"
    elif ns not in ("*", ".") and not (ns == "~" and not gateway) and dns_label_problem(ns):
        return f"invalid namespace {ns!r}"
    if name != "*" and "." not in name:
        return "short names (non FQDN) are not allowed"
    problem = wildcard_domain_problem(name)
    if problem and not (gateway and is_ip(name)):
        return problem
    if "*" in name and name != "*" and not name.startswith("*."):
        return f"partial wildcard {name!r} is not allowed"
    return None
