"""The service registry: hostnames -> services -> endpoints, as one immutable snapshot.

A ``ServiceRegistry`` is never changed in place. ``with_service``, ``with_endpoints``,
``with_health``, ``without_cluster`` return a new registry that shares every untouched
``Service`` with the old one, so a control plane swaps its view with one assignment and
readers never see half an update. Building from scratch goes through ``RegistryBuilder``,
which collects declarations and endpoints in dicts and freezes them once (a registry of
1,000 services and 10,000 endpoints builds in tens of milliseconds; calling
``with_endpoints`` 10,000 times would copy the service table each time).

Namespace sameness: ``reviews.bookinfo`` declared in several clusters is ONE service whose
endpoints are the union of theirs, each endpoint keeping its cluster, network and
locality (Istio multi-primary; the MCS API's ``clusterset.local`` names the same thing).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Iterator, Mapping

from ._endpoint import Endpoint, Service, ServicePort, UndeclaredPortError
from ._errors import RegistryError
from ._hostname import (DEFAULT_DOMAIN, Hostname, InvalidValueError, canonical, resolution_candidates,
                        wildcard_keys)


class UnknownServiceError(RegistryError):
    """A change or a lookup that names a service the registry does not hold."""

    def __init__(self, message: str, hostname: str) -> None:
        super().__init__(message)
        self.hostname = hostname


class UnknownEndpointError(RegistryError):
    """A health change for an address no endpoint has."""

    def __init__(self, message: str, hostname: str, address: str) -> None:
        super().__init__(message)
        self.hostname = hostname
        self.address = address


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class ServiceRegistry:
    """An immutable snapshot of every service the mesh knows, keyed by FQDN."""

    __slots__ = ("domain", "_services", "_wild", "_odd_wild", "_endpoint_count", "_clusters")

    def __init__(self, services: Iterable[Service] = (), *, domain: str = DEFAULT_DOMAIN) -> None:
        """Services with the same hostname replace one another, the last one staying."""
        table: dict[str, Service] = {}
        for s in services:
            table[canonical(s.hostname.name, domain)] = s
        self._freeze(table, domain)

    def _freeze(self, table: dict[str, Service], domain: str) -> None:
        self.domain = domain
        self._services = table
        self._wild: dict[str, Service] = {}
        odd: list[tuple[str, Service]] = []
        clusters: set[str] = set()
        count = 0
        for key, s in table.items():
            count += len(s.endpoints)
            clusters.update(s.clusters)
            if key.startswith("*"):
                if key == "*" or key.startswith("*."):
                    self._wild[key] = s
                else:  # `*foo.com`, which Istio accepts and matches by plain suffix
                    odd.append((key[1:], s))
        odd.sort(key=lambda pair: -len(pair[0]))
        self._odd_wild = tuple(odd)
        self._endpoint_count = count
        self._clusters = tuple(sorted(clusters))

    @classmethod
    def _of(cls, table: dict[str, Service], domain: str) -> ServiceRegistry:
        reg = cls.__new__(cls)
        reg._freeze(table, domain)
        return reg

    # -- reading ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._services)

    def __iter__(self) -> Iterator[Service]:
        return iter(self.services)

    def __contains__(self, hostname: object) -> bool:
        return isinstance(hostname, (str, Hostname)) and self._find(hostname) is not None

    def __repr__(self) -> str:
        return (f"<ServiceRegistry {_plural(len(self._services), 'service')}, "
                f"{_plural(self._endpoint_count, 'endpoint')}, {_plural(len(self._clusters), 'cluster')}>")

    @property
    def services(self) -> tuple[Service, ...]:
        return tuple(self._services[k] for k in sorted(self._services))

    @property
    def clusters(self) -> tuple[str, ...]:
        """Clusters with at least one endpoint, sorted."""
        return self._clusters

    @property
    def endpoint_count(self) -> int:
        return self._endpoint_count

    def _find(self, hostname: str | Hostname) -> Service | None:
        if isinstance(hostname, Hostname):
            return self._services.get(canonical(hostname.name, self.domain))
        found = self._services.get(hostname)
        if found is None:
            try:
                found = self._services.get(canonical(Hostname.parse(hostname).name, self.domain))
            except InvalidValueError:
                return None
        return found

    def get(self, hostname: str | Hostname) -> Service:
        """The service with exactly this FQDN (or its ``clusterset.local`` alias)."""
        found = self._find(hostname)
        if found is None:
            raise UnknownServiceError(f"no service {str(hostname)!r} in the registry", str(hostname))
        return found

    def lookup(self, name: str | Hostname, client_namespace: str = "default") -> Service | None:
        """The service a client in ``client_namespace`` reaches by ``name``, or None.

        Exact names are tried in resolver order through the namespace search path (see
        ``_hostname``); only if none is known does a wildcard host (ServiceEntry
        ``*.example.com``) answer, the most specific first and the name as written
        before its search-path expansions, as Envoy prefers exact virtual-host domains.
        A ``Hostname`` is taken as absolute.
        """
        text = name.name + "." if isinstance(name, Hostname) else name
        candidates = resolution_candidates(text, client_namespace, self.domain)
        services = self._services
        for c in candidates:
            found = services.get(canonical(c, self.domain))
            if found is not None:
                return found
        if not (self._wild or self._odd_wild):
            return None
        literal = text.strip().lower().removesuffix(".")
        for c in sorted(candidates, key=lambda c: c != literal):
            found = self._match_wildcard(canonical(c, self.domain))
            if found is not None:
                return found
        return None

    def _match_wildcard(self, name: str) -> Service | None:
        best: Service | None = None
        for key in wildcard_keys(name):
            best = self._wild.get(key)
            if best is not None:
                break
        best_len = len(best.hostname.name) - 1 if best is not None else -1
        for suffix, s in self._odd_wild:  # longest first
            if len(suffix) <= best_len:
                break
            if name.endswith(suffix):
                return s
        return best

    def endpoints(self, hostname: str | Hostname, port: int | str | None = None,
                  subset_labels: Mapping[str, str] | None = None, cluster: str | None = None,
                  healthy_only: bool = False) -> tuple[Endpoint, ...]:
        """Endpoints of a service, optionally of one service port (number or name), one
        subset (every selector label present on the endpoint; ``{}`` selects all), one
        cluster, the healthy ones only."""
        svc = self.get(hostname)
        eps: Iterable[Endpoint] = svc.endpoints
        if port is not None:
            sp = self._port_of(svc, port)
            eps = [e for e in eps if e.serves(sp)]
        if cluster is not None:
            eps = [e for e in eps if e.cluster == cluster]
        if subset_labels:
            selector = dict(subset_labels)
            eps = [e for e in eps if e.labels.selects(selector)]
        if healthy_only:
            eps = [e for e in eps if e.healthy]
        return tuple(eps)

    @staticmethod
    def _port_of(svc: Service, port: int | str) -> ServicePort:
        found = svc.port(port)
        if found is None:
            declared = ", ".join(f"{p.port} ({p.name})" if p.name else str(p.port) for p in svc.ports) or "none"
            raise UndeclaredPortError(f"{svc.hostname}: port {port!r} is not declared (declared: {declared})",
                                      str(svc.hostname), port)
        return found

    def clusters_of(self, hostname: str | Hostname) -> tuple[str, ...]:
        """Clusters with at least one endpoint of the service, sorted."""
        return self.get(hostname).clusters

    # -- new snapshots ---------------------------------------------------------------

    def with_service(self, service: Service) -> ServiceRegistry:
        """A registry where ``service`` (declaration and endpoints as given) replaces any
        service of the same hostname; to keep the old endpoints, pass them in."""
        table = dict(self._services)
        table[canonical(service.hostname.name, self.domain)] = service
        return ServiceRegistry._of(table, self.domain)

    def without_service(self, hostname: str | Hostname) -> ServiceRegistry:
        svc = self.get(hostname)
        table = dict(self._services)
        del table[canonical(svc.hostname.name, self.domain)]
        return ServiceRegistry._of(table, self.domain)

    def with_endpoints(self, hostname: str | Hostname, cluster: str,
                       endpoints: Iterable[Endpoint]) -> ServiceRegistry:
        """A registry where ``cluster``'s endpoints of the service are exactly ``endpoints``.

        Endpoints without a cluster get ``cluster``; other clusters' endpoints stay.
        """
        svc = self.get(hostname)
        fresh = _own(svc, cluster, endpoints)
        kept = [e for e in svc.endpoints if e.cluster != cluster]
        return self._replacing([replace(svc, endpoints=(*kept, *fresh))])

    def without_cluster(self, cluster: str) -> ServiceRegistry:
        """A registry without ``cluster``: its endpoints go, and so does every service that
        only it declared and that no other cluster has endpoints for (a service declared
        mesh-wide, ``declared_in=()``, stays even without endpoints)."""
        table = dict(self._services)
        for key, s in self._services.items():
            if cluster not in s.clusters and cluster not in s.declared_in:
                continue
            declared = tuple(c for c in s.declared_in if c != cluster)
            eps = tuple(e for e in s.endpoints if e.cluster != cluster)
            if s.declared_in and not declared:
                if not eps:
                    del table[key]
                    continue
                # Clusters that still hold endpoints now carry the declaration, so that
                # removing them too removes the service rather than making it mesh-wide.
                declared = tuple({e.cluster for e in eps if e.cluster})
            table[key] = replace(s, declared_in=declared, endpoints=eps)
        return ServiceRegistry._of(table, self.domain)

    def with_health(self, address: str, healthy: bool, *, hostname: str | Hostname | None = None,
                    cluster: str | None = None, port: int | None = None) -> ServiceRegistry:
        """A registry where endpoints at ``address`` (optionally only of one service, in one
        cluster, listening on one port) are marked healthy or not."""
        scope = [self.get(hostname)] if hostname is not None else list(self._services.values())
        changes: list[Service] = []
        for s in scope:
            hit = False
            eps = []
            for e in s.endpoints:
                if (e.address == address and (cluster is None or e.cluster == cluster)
                        and (port is None or e.port == port)):
                    hit = True
                    if e.healthy != healthy:
                        e = replace(e, healthy=healthy)
                eps.append(e)
            if hit:
                changes.append(replace(s, endpoints=tuple(eps)))
        if not changes:
            where = f" of {hostname}" if hostname is not None else ""
            where += f" in cluster {cluster!r}" if cluster is not None else ""
            where += f" on port {port}" if port is not None else ""
            raise UnknownEndpointError(f"no endpoint at {address!r}{where}", str(hostname or ""), address)
        return self._replacing(changes)

    def _replacing(self, changes: list[Service]) -> ServiceRegistry:
        table = dict(self._services)
        for new in changes:
            table[canonical(new.hostname.name, self.domain)] = new
        return ServiceRegistry._of(table, self.domain)


def _own(svc: Service, cluster: str, endpoints: Iterable[Endpoint]) -> list[Endpoint]:
    """``endpoints`` stamped with ``cluster``; an endpoint of another cluster is refused."""
    out = []
    for e in endpoints:
        if not e.cluster:
            e = replace(e, cluster=cluster)
        elif e.cluster != cluster:
            raise InvalidValueError(f"{svc.hostname}: endpoint {e.address}:{e.port} belongs to cluster "
                                    f"{e.cluster!r}, not {cluster!r}", e.cluster)
        out.append(e)
    return out


class RegistryBuilder:
    """Collects declarations and endpoints, then freezes them into a ``ServiceRegistry``.

    Declaring a hostname twice merges the declarations as clusters' copies of one
    service: the first declaration's namespace, name, resolution and locality stay, ports
    are the union by number (the first declaration of a number wins) and ``declared_in``
    the union of clusters.
    """

    def __init__(self, domain: str = DEFAULT_DOMAIN) -> None:
        self.domain = domain
        self._decls: dict[str, Service] = {}
        self._endpoints: dict[str, list[Endpoint]] = {}

    def add_service(self, service: Service) -> Service:
        """Declare (or merge into) a service; returns the declaration as it now stands."""
        key = canonical(service.hostname.name, self.domain)
        old = self._decls.get(key)
        if old is None:
            merged = replace(service, endpoints=())
        else:
            known = {p.port for p in old.ports}
            extra = tuple(p for p in service.ports if p.port not in known)
            merged = replace(old, ports=(*old.ports, *extra),
                             declared_in=(*old.declared_in, *service.declared_in))
        self._decls[key] = merged
        self._endpoints.setdefault(key, []).extend(service.endpoints)
        return merged

    def add_endpoints(self, hostname: str | Hostname, cluster: str, endpoints: Iterable[Endpoint]) -> None:
        """Add endpoints of ``cluster`` to a declared service (they are checked at ``build``)."""
        key = canonical(Hostname.parse(hostname).name, self.domain)
        svc = self._decls.get(key)
        if svc is None:
            raise UnknownServiceError(f"cannot add endpoints to {str(hostname)!r}: no such service is declared",
                                      str(hostname))
        self._endpoints[key].extend(_own(svc, cluster, endpoints))

    def build(self) -> ServiceRegistry:
        table = {key: replace(decl, endpoints=tuple(self._endpoints[key])) if self._endpoints[key] else decl
                 for key, decl in self._decls.items()}
        return ServiceRegistry._of(table, self.domain)
