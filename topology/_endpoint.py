"""Value types of the service registry: localities, label sets, endpoints, ports and services.

A ``Service`` is declared once for the whole mesh (namespace sameness, as Istio
multi-primary and the MCS API have it) and carries the union of its endpoints; each
``Endpoint`` remembers the cluster, network and locality it came from, which is all that
locality load balancing and cross-network routing need to know about it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Mapping

from ._decode import describe
from ._errors import RegistryError
from ._hostname import Hostname, InvalidValueError
from ._istio_checks import PROTOCOLS as ISTIO_PROTOCOLS
from ._serviceentry import Resolution  # one enum for ServiceEntry config and the registry

_UNBOUND = 0


class UndeclaredPortError(RegistryError):
    """A port the service does not declare: asked for, or served by an endpoint."""

    def __init__(self, message: str, hostname: str, port: int | str) -> None:
        super().__init__(message)
        self.hostname = hostname
        self.port = port


@dataclass(frozen=True, slots=True, order=True)
class Locality:
    """Where an endpoint runs: ``region/zone/subzone``, as Envoy's ``core.Locality``.

    Empty trailing tiers mean "not known": ``Locality("us-east")`` is a region only.
    """

    region: str = ""
    zone: str = ""
    subzone: str = ""

    def __post_init__(self) -> None:
        tiers = (self.region, self.zone, self.subzone)
        for tier in tiers:
            if not isinstance(tier, str) or "/" in tier or "*" in tier:
                raise InvalidValueError(f"locality tier must be a string without '/' or '*'; found {describe(tier)}", tier)
        if (self.zone and not self.region) or (self.subzone and not self.zone):
            raise InvalidValueError(f"locality {'/'.join(tiers)!r} names a lower tier without the one above it", tiers)

    @classmethod
    def parse(cls, text: str) -> Locality:
        """``"us-east/us-east-1a/rack1"`` -> ``Locality("us-east", "us-east-1a", "rack1")``."""
        if not isinstance(text, str):
            raise InvalidValueError(f"locality must be a string 'region/zone/subzone'; found {describe(text)}", text)
        if not text:
            return EMPTY_LOCALITY
        parts = text.split("/")
        if len(parts) > 3:
            raise InvalidValueError(f"locality has at most 3 tiers (region/zone/subzone); found {text!r}", text)
        return cls(*parts)

    def __str__(self) -> str:
        # Istio's LocalityToString: stop at the first empty tier.
        if not self.zone:
            return self.region
        return f"{self.region}/{self.zone}/{self.subzone}" if self.subzone else f"{self.region}/{self.zone}"

    @property
    def is_empty(self) -> bool:
        return not self.region

    def matches(self, prefix: Locality) -> bool:
        """Whether this locality lies within ``prefix`` (a region, a zone or a full locality)."""
        return (prefix.region == self.region
                and (not prefix.zone or prefix.zone == self.zone)
                and (not prefix.subzone or prefix.subzone == self.subzone))

    def matches_pattern(self, pattern: str) -> bool:
        """Istio's ``LocalityMatch`` for the ``from``/``to`` keys of ``distribute`` and ``failover``.

        Each tier of ``region/zone/subzone`` is either literal or ``*``; a tier left out
        (``us-east`` or ``us-east/*``) matches anything below it.
        """
        parts = (pattern.split("/") + ["", ""])[:3]
        region, zone, subzone = parts
        return ((region == "*" or region == self.region)
                and (zone in ("*", "") or zone == self.zone)
                and (subzone in ("*", "") or subzone == self.subzone))

    def proximity(self, other: Locality) -> int:
        """How many leading tiers the two share (0..3); Envoy's locality priority is ``3 - proximity``."""
        if self.region != other.region:
            return 0
        if self.zone != other.zone:
            return 1
        return 2 if self.subzone != other.subzone else 3


EMPTY_LOCALITY = Locality()


class Labels(Mapping[str, str]):
    """An immutable, hashable label set, shared by every endpoint of one workload."""

    __slots__ = ("_d", "_hash")

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        d = dict(items)
        for k, v in d.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise InvalidValueError(f"labels must map strings to strings; found {describe(k)}: {describe(v)}", (k, v))
        self._d = d
        self._hash: int | None = None

    @classmethod
    def of(cls, value: Labels | Mapping[str, str] | Iterable[tuple[str, str]]) -> Labels:
        return value if isinstance(value, Labels) else cls(value)

    def __getitem__(self, key: str) -> str:
        return self._d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._d.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Labels):
            return self._d == other._d
        return isinstance(other, Mapping) and self._d == dict(other.items())

    def __repr__(self) -> str:
        return f"Labels({self._d!r})"

    def selects(self, selector: Mapping[str, str]) -> bool:
        """Kubernetes label-selector semantics: every selector pair is present; ``{}`` selects all."""
        d = self._d
        return all(d.get(k) == v for k, v in selector.items())


EMPTY_LABELS = Labels()


PROTOCOLS = ISTIO_PROTOCOLS | {"UNSUPPORTED"}
"""Istio's port protocols (networking ``Port.protocol``); UNSUPPORTED is Istio's name for
a port whose protocol is sniffed."""


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One port a service offers and where its endpoints listen for it."""

    name: str
    port: int
    protocol: str = "TCP"
    """Istio protocol name, upper case (``HTTP``, ``HTTP2``, ``GRPC``, ``TCP``...). Defaults to TCP."""
    target_port: int = 0
    """Port endpoints listen on; 0 means the same as ``port`` (Kubernetes' default)."""

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise InvalidValueError(f"service port must be 1..65535; found {describe(self.port)}", self.port)
        if not isinstance(self.target_port, int) or not 0 <= self.target_port <= 65535:
            raise InvalidValueError(f"target port must be 0..65535; found {describe(self.target_port)}", self.target_port)
        protocol = self.protocol.upper() if isinstance(self.protocol, str) else self.protocol
        if protocol not in PROTOCOLS:
            raise InvalidValueError(f"protocol must be one of {', '.join(sorted(PROTOCOLS))}; found {describe(self.protocol)}",
                                    self.protocol)
        object.__setattr__(self, "protocol", protocol)
        if self.target_port == 0:
            object.__setattr__(self, "target_port", self.port)


@dataclass(frozen=True, slots=True, repr=False)
class Endpoint:
    """One address serving one port of a service, with where it runs."""

    address: str
    """IP address (a 127.x.y.z loopback address for meshfed workloads) or DNS name."""
    port: int
    """Port the endpoint listens on."""
    labels: Labels = EMPTY_LABELS
    locality: Locality = EMPTY_LOCALITY
    cluster: str = ""
    network: str = ""
    weight: int = 1
    """Load-balancing weight, >= 1 (Envoy's ``load_balancing_weight``). Defaults to 1."""
    healthy: bool = True
    service_account: str = ""
    instance: str = ""
    """Name of the workload instance (pod) the endpoint belongs to."""
    service_port: int = _UNBOUND
    """Service port this endpoint serves (ServiceEntry endpoints that override a port's
    target); 0 means every service port whose ``target_port`` equals ``port``."""

    def serves(self, port: ServicePort) -> bool:
        """Whether this endpoint is a backend of the service port ``port``."""
        if self.service_port == _UNBOUND:
            return self.port == port.target_port
        return self.service_port == port.port

    def __post_init__(self) -> None:
        if not isinstance(self.labels, Labels):
            object.__setattr__(self, "labels", Labels.of(self.labels))
        if isinstance(self.locality, str):
            object.__setattr__(self, "locality", Locality.parse(self.locality))
        if not isinstance(self.address, str) or not self.address:
            raise InvalidValueError(f"endpoint address must be a non-empty string; found {describe(self.address)}", self.address)
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise InvalidValueError(f"endpoint port must be 0..65535; found {describe(self.port)}", self.port)
        if not isinstance(self.weight, int) or isinstance(self.weight, bool) or self.weight < 1:
            raise InvalidValueError(f"endpoint weight must be an integer >= 1; found {describe(self.weight)}", self.weight)

    def __repr__(self) -> str:
        state = "healthy" if self.healthy else "unhealthy"
        where = " ".join(x for x in (self.cluster, str(self.locality)) if x)
        return f"<Endpoint {self.address}:{self.port} {where + ' ' if where else ''}{state}>"


@dataclass(frozen=True, slots=True, repr=False)
class Service:
    """A service as the whole mesh sees it: one declaration, the endpoints of every cluster.

    Construct it with ``endpoints=()`` and let the registry add endpoints. Every endpoint
    must serve a declared port: by ``service_port``, or, when that is 0, by listening on a
    declared ``target_port``.
    """

    hostname: Hostname
    namespace: str
    name: str
    """Kubernetes Service name, or the host itself for a ServiceEntry."""
    ports: tuple[ServicePort, ...] = ()
    resolution: Resolution = Resolution.STATIC
    """How clients find addresses: STATIC (endpoints' addresses; Kubernetes services, Istio's
    ClientSideLB), DNS / DNS_ROUND_ROBIN (resolve the endpoints' names), NONE (the address
    the client dialled). Defaults to STATIC."""
    is_external: bool = False
    """True for a ServiceEntry with ``location: MESH_EXTERNAL``."""
    declared_in: tuple[str, ...] = ()
    """Clusters whose config declares the service; () for a mesh-wide declaration."""
    endpoints: tuple[Endpoint, ...] = ()
    clusters: tuple[str, ...] = field(init=False, compare=False)
    """Clusters that have at least one endpoint, sorted (mesh-wide endpoints have none)."""

    def __post_init__(self) -> None:
        if not isinstance(self.hostname, Hostname):
            object.__setattr__(self, "hostname", Hostname.parse(self.hostname))
        object.__setattr__(self, "ports", tuple(self.ports))
        object.__setattr__(self, "declared_in", tuple(sorted(set(self.declared_in))))
        seen: dict[int, ServicePort] = {}
        for p in self.ports:
            if p.port in seen:
                raise UndeclaredPortError(f"{self.hostname}: port {p.port} is declared twice "
                                          f"({seen[p.port].name!r} and {p.name!r})", str(self.hostname), p.port)
            seen[p.port] = p
        targets = {p.target_port for p in self.ports}
        endpoints = tuple(self.endpoints)
        for ep in endpoints:
            if ep.service_port == _UNBOUND:
                if ep.port not in targets:
                    declared = ", ".join(str(p.target_port) for p in self.ports) or "none"
                    raise UndeclaredPortError(f"{self.hostname}: endpoint {ep.address}:{ep.port} listens on no declared "
                                              f"target port (declared: {declared})", str(self.hostname), ep.port)
            elif ep.service_port not in seen:
                raise UndeclaredPortError(f"{self.hostname}: endpoint {ep.address}:{ep.port} serves port {ep.service_port}, "
                                          f"which the service does not declare", str(self.hostname), ep.service_port)
        object.__setattr__(self, "endpoints", endpoints)
        object.__setattr__(self, "clusters", tuple(sorted({ep.cluster for ep in endpoints} - {""})))

    def port(self, port: int | str) -> ServicePort | None:
        """The declared port with this number or name."""
        for p in self.ports:
            if p.port == port or p.name == port:
                return p
        return None

    def __repr__(self) -> str:
        n, c = len(self.endpoints), len(self.clusters)
        return (f"<Service {self.hostname} [{n} endpoint{'' if n == 1 else 's'} "
                f"in {c} cluster{'' if c == 1 else 's'}]>")
