"""Value types shared by the networking.istio.io kinds: destinations, string matches,
percentages, port and workload selectors (istio/api ``networking/v1``)."""

from __future__ import annotations

from dataclasses import dataclass

from ._decode import Check, describe, opt
from ._istio_checks import (
    check_oneof, check_port, check_regex, check_selector_labels, check_subset_name, check_wildcard_domain,
)


@dataclass(frozen=True, slots=True)
class Percent:
    """A fraction of traffic in percent, as a double (``{value: 12.5}``)."""

    value: float = 0.0
    """Percentage in the range 0.0..100.0. Defaults to 0."""

    def _check(self, c: Check) -> None:
        if not 0.0 <= self.value <= 100.0:
            c.error("value", f"must be between 0 and 100; found {describe(self.value)}")


@dataclass(frozen=True, slots=True)
class PortSelector:
    """A port of the destination service."""

    number: int | None = None
    """Port number, 1..65535. Required when the selector is given."""

    def _check(self, c: Check) -> None:
        if self.number is None:
            c.error("", "missing required field 'number'")
        else:
            check_port(c, "number", self.number)


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a request or connection goes after routing: a host in the registry."""

    host: str = opt(required=True)
    """Service name from the registry (Kubernetes service or ServiceEntry host). Short
    names are qualified with the rule's namespace. Required."""
    subset: str | None = None
    """Name of a subset of the service, declared in a DestinationRule."""
    port: PortSelector | None = None
    """Port on the host; only needed when the service exposes more than one port."""

    def _check(self, c: Check) -> None:
        if self.host == "*":
            c.error("host", "'*' cannot be a destination; name one host")
        else:
            check_wildcard_domain(c, "host", self.host)
        if self.subset is not None:
            check_subset_name(c, "subset", self.subset)


@dataclass(frozen=True, slots=True)
class StringMatch:
    """One of ``exact``, ``prefix`` or ``regex`` (RE2). An empty match tests presence."""

    exact: str | None = None
    """Exact string match."""
    prefix: str | None = None
    """Prefix-based match."""
    regex: str | None = None
    """RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)."""

    @property
    def kind(self) -> str | None:
        return "exact" if self.exact is not None else "prefix" if self.prefix is not None \
            else "regex" if self.regex is not None else None

    def _check(self, c: Check) -> None:
        if check_oneof(c, self, ("exact", "prefix", "regex")):
            return
        if self.prefix == "":
            c.error("prefix", "a prefix match must not be empty; found string ''")
        if self.regex is not None:
            check_regex(c, "regex", self.regex)


@dataclass(frozen=True, slots=True)
class WorkloadSelector:
    """Selects workloads by labels (networking.istio.io's ``{labels: ...}``)."""

    labels: dict[str, str] = opt(factory=dict)
    """Labels a workload must carry, all of them. Wildcards are not supported."""

    def _check(self, c: Check) -> None:
        check_selector_labels(c, "labels", self.labels)


@dataclass(frozen=True, slots=True)
class MatchLabelsSelector:
    """Selects workloads by labels (istio.type.v1beta1's ``{matchLabels: ...}``)."""

    match_labels: dict[str, str] = opt(factory=dict)
    """Labels a workload must carry, all of them. Wildcards are not supported."""

    def _check(self, c: Check) -> None:
        check_selector_labels(c, "matchLabels", self.match_labels)


@dataclass(frozen=True, slots=True)
class Port:
    """A port with its protocol (Gateway servers, ServiceEntry and Sidecar ports)."""

    number: int | None = None
    """Port number, 1..65535."""
    protocol: str | None = None
    """HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, MYSQL, REDIS, TCP, TLS or UDP
    (case-insensitive). Where optional, unset means the protocol is sniffed."""
    name: str | None = None
    """Name of the port."""
    target_port: int | None = None
    """Port on the endpoint that receives the traffic (ServiceEntry). Defaults to ``number``."""
