"""Delegate VirtualServices spliced into their roots, as Istio merges them.

Theory of operation (pilot ``mergeVirtualServicesIfNeeded``): a rule with ``delegate`` is
replaced by the delegate's rules, each under the root rule's match. Every delegate match
must fit inside some root match (``hasConflict``: a regex on either side conflicts, an
exact root takes only the same exact, a prefix root takes prefixes and exacts under it,
other fields must not disagree); a delegate rule that fits none is dropped. The merged
match takes the delegate's fields, the root's where the delegate has none, and the union
of headers, withoutHeaders and queryParams. Fields of the root rule fill what the
delegate rule leaves unset (rewrite, timeout, retries, fault, mirror, corsPolicy,
headers). A delegate that is missing, or not exported to the root's namespace, drops
only that rule. Short host names in a delegate's rules resolve in the delegate's own
namespace, as Istio resolves them before merging.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

from topology._http_route import HTTPMatchRequest, HTTPRoute
from topology._istio_types import StringMatch
from topology._resource import Resource


def is_exported_to(export_to: Iterable[str], owner_namespace: str, namespace: str) -> bool:
    """Visibility of a resource in ``namespace``; no exportTo means everywhere (Istio's
    default ``defaultVirtualServiceExportTo: *``)."""
    entries = tuple(export_to)
    if not entries:
        return True
    return any(e == "*" or e == namespace or (e == "." and owner_namespace == namespace) for e in entries)


def merge_delegates(root: Resource, delegates: Mapping[tuple[str, str], Resource],
                    warnings: list[str]) -> tuple[tuple[HTTPRoute, str], ...]:
    """The root's HTTP rules with every delegating rule replaced by the delegate's rules,
    each with the namespace its short names resolve in."""
    out: list[tuple[HTTPRoute, str]] = []
    for i, rule in enumerate(root.spec.http):
        if rule.delegate is None:
            out.append((rule, root.namespace))
            continue
        ns = rule.delegate.namespace or root.namespace
        where = f"{root.namespace}/{root.name}: http[{i}]: delegate {ns}/{rule.delegate.name}"
        d = delegates.get((ns, rule.delegate.name))
        if d is None:
            warnings.append(f"{where} not found; rule ignored")
            continue
        if not is_exported_to(d.spec.export_to, d.namespace, root.namespace):
            warnings.append(f"{where} is not exported to {root.namespace!r}; rule ignored")
            continue
        for sub in d.spec.http:
            merged = merge_http_route(rule, sub)
            if merged is not None:
                out.append((merged, d.namespace))
    return tuple(out)


def merge_http_route(root: HTTPRoute, sub: HTTPRoute) -> HTTPRoute | None:
    """Istio's ``mergeHTTPRoute``: None when the delegate rule's matches conflict."""
    match, conflict = _merge_matches(root.match, sub.match)
    if conflict:
        return None
    name = sub.name or root.name
    if sub.name and root.name:
        name = f"{root.name}-{sub.name}"
    inherited = {f: getattr(root, f) for f in ("rewrite", "timeout", "retries", "fault", "mirror", "mirror_percent",
                                                 "mirror_percentage", "cors_policy", "headers")
                 if getattr(sub, f) is None}
    return dataclasses.replace(sub, match=match, name=name, delegate=None, **inherited)


def _merge_matches(root: tuple[HTTPMatchRequest, ...],
                   sub: tuple[HTTPMatchRequest, ...]) -> tuple[tuple[HTTPMatchRequest, ...], bool]:
    if not root:
        return sub, False
    if not sub:
        return root, False
    out: list[HTTPMatchRequest] = []
    for leaf in sub:
        found = False
        for r in root:
            if _has_conflict(r, leaf):
                continue
            out.append(_merge_match(r, leaf))
            found = True
        if not found:
            return (), True
    return tuple(out), not out


def _merge_match(root: HTTPMatchRequest, leaf: HTTPMatchRequest) -> HTTPMatchRequest:
    name = leaf.name or root.name
    if leaf.name and root.name:
        name = f"{root.name}-{leaf.name}"
    return dataclasses.replace(
        leaf, name=name, uri=leaf.uri or root.uri, scheme=leaf.scheme or root.scheme,
        method=leaf.method or root.method, authority=leaf.authority or root.authority,
        headers={**root.headers, **leaf.headers}, without_headers={**root.without_headers, **leaf.without_headers},
        query_params={**root.query_params, **leaf.query_params}, port=leaf.port or root.port)


def _has_conflict(root: HTTPMatchRequest, leaf: HTTPMatchRequest) -> bool:
    for a, b in ((root.uri, leaf.uri), (root.scheme, leaf.scheme), (root.method, leaf.method),
                 (root.authority, leaf.authority)):
        if _string_conflict(a, b):
            return True
    for key, value in leaf.headers.items():
        if _string_conflict(root.headers.get(key), value):
            return True
    for key, value in leaf.without_headers.items():  # Istio compares with the root's headers
        if _string_conflict(root.headers.get(key), value):
            return True
    for key, value in leaf.query_params.items():
        if _string_conflict(root.query_params.get(key), value):
            return True
    if root.ignore_uri_case != leaf.ignore_uri_case:
        return True
    return bool(root.port and leaf.port and root.port != leaf.port)


def _string_conflict(root: StringMatch | None, leaf: StringMatch | None) -> bool:
    """Istio's ``stringMatchConflict`` (an empty string counts as unset, as in protobuf)."""
    if root is None or leaf is None:
        return False
    if root.regex or leaf.regex:
        return True
    if root.exact:
        return bool(leaf.prefix) or leaf.exact != root.exact
    if root.prefix:
        if leaf.prefix:
            return not leaf.prefix.startswith(root.prefix)
        if leaf.exact:
            return not leaf.exact.startswith(root.prefix)
    return True
