"""The hops of ``fedctl check`` past the client: gateway, server sidecar, trust, request.

The gateway is judged with its own compiled table (``gateway.EastWestTable`` over the
document its admin names), so "would it route this SNI" is answered as the gateway
answers it; a gateway that accepts TCP but whose admin says nothing is a hung process. Trust
is a real handshake with the SNI the sidecar sends, presenting the client's SVID when its
key is readable; the chain the server sent is then judged with ``trustdomain.verify_peer``
against the client's bundles - which is what the sidecar itself does. The last hop is a
real request through the client's outbound listener, its response flags read from the
sidecar's ``istio_requests_total`` before and after.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

from gateway._config import load_proxy_config_text, parse_hostport
from gateway._eastwest_routes import EastWestRoute, EastWestTable, Refusal
from gateway._flags import ResponseFlag

from ._check_report import Hop, fail, ok
from ._check_view import ClientView, Resolution

_REFUSAL_HINTS = {
    Refusal.UNKNOWN_SERVICE: "the gateway's cluster has no such service: is it the right cluster?",
    Refusal.NOT_EXPORTED: "export the service from the gateway's cluster (a ServiceExport in its namespace)",
    Refusal.UNKNOWN_PORT: "the service has no such port in the gateway's cluster",
    Refusal.UNKNOWN_SUBSET: "define the subset in a DestinationRule the gateway's cluster has too",
    Refusal.NO_HEALTHY_ENDPOINT: "no healthy instance of the service runs behind that gateway: 'fedctl status'",
}
_FLAG_NAMES = {f.code: f.long_name for f in ResponseFlag}


def remote_hops(client: Any, view: ClientView, res: Resolution, cluster: Any, host: Any, probes: Any, path: str,
                dump: dict[str, Any]) -> Iterator[Hop]:
    gateway_refusals: dict[str, float] | None = None
    gateway_admin = None
    backends: list[str] | None = None
    if host is not None:
        target = host.endpoint
        e = target.endpoint
        if e.gateway is not None:
            gateway_admin = f"{parse_hostport(e.gateway)[0]}:15000"
            hop, backends, gateway_refusals = _gateway_hop(e, target.sni, gateway_admin, probes)
            yield hop
            if not hop.ok:
                return
        hop = _server_hop(target, backends, probes)
        yield hop
        if not hop.ok:
            return
        if target.tls:
            hop = _trust_hop(client, view, target, probes, gateway_admin, gateway_refusals, dump)
            yield hop
            if not hop.ok:
                return
    yield _request_hop(client, res, probes, path)


def _gateway_hop(e: Any, sni: str, admin: str, probes: Any) -> tuple[Hop, list[str] | None, dict[str, float] | None]:
    name = "gateway"
    where = f"gateway {e.gateway} of cluster {e.cluster or '?'}"
    error = probes.connect(e.gateway)
    if error is not None:
        return fail(name, f"{where} unreachable: {error}",
                    f"is the east-west gateway of {e.cluster or 'that cluster'} running ('fedctl status')? "
                    "is the link up ('fedctl link list')?", gateway=e.gateway), None, None
    ready = probes.admin(admin, "/ready")
    if ready.hung:
        return fail(name, f"{where} accepts TCP connections but does not answer: its admin {admin} said nothing "
                          f"({ready.error})",
                    "the gateway process is stopped or overloaded: see 'fedctl status' and its log; restart it",
                    gateway=e.gateway), None, None
    if ready.status != 200:
        detail = ready.error or f"/ready answered {ready.status}"
        return ok(name, f"{where} accepts connections (its admin {admin}: {detail}; routing not verified from here)",
                  gateway=e.gateway), None, None
    refusals = _refusals(probes.admin(admin, "/metrics"))
    dump = probes.admin(admin, "/config_dump")
    try:
        file = str(json.loads(dump.body).get("file") or "") if dump.ok else ""
    except ValueError:
        file = ""
    text = probes.read_text(file) if file else None
    config = load_proxy_config_text(text, file)[0] if text else None
    if config is None:
        return ok(name, f"{where} reachable and ready (its document is not readable here: routing not verified)",
                  gateway=e.gateway), None, refusals
    decision = EastWestTable.compile(config).route(sni)
    if isinstance(decision, Refusal):
        return fail(name, f"{where} would refuse SNI {sni}: {decision.reason} (flag {decision.flag})",
                    _REFUSAL_HINTS.get(decision, "see the gateway's log"), gateway=e.gateway,
                    refusal=decision.reason), None, refusals
    route: EastWestRoute = decision
    backends = [b.authority for b in route.backends]
    return ok(name, f"{where} reachable; it exports {route.fqdn}:{route.port}"
                    f"{' subset ' + route.subset if route.subset else ''} with {len(backends)} healthy endpoint(s): "
                    f"{', '.join(backends)}", gateway=e.gateway, backends=backends), backends, refusals


def _server_hop(target: Any, backends: list[str] | None, probes: Any) -> Hop:
    name = "server-sidecar"
    if target.endpoint.gateway is None:
        error = probes.connect(target.authority)
        if error is not None:
            return fail(name, f"{target.authority} unreachable: {error}",
                        "the endpoint's instance is down or restarting: 'fedctl status'")
        return ok(name, f"{target.authority} accepts connections")
    if backends is None:
        return ok(name, "behind the gateway, not visible from here (the handshake below goes through it)")
    reachable = [b for b in backends if probes.connect(b) is None]
    if not reachable:
        return fail(name, f"none of the gateway's endpoints accepts connections: {', '.join(backends)}",
                    "the instances behind the gateway are down: 'fedctl status' of that cluster")
    return ok(name, f"{len(reachable)} of {len(backends)} endpoint sidecar(s) behind the gateway accept connections: "
                    f"{', '.join(reachable)}", reachable=reachable)


def _trust_hop(client: Any, view: ClientView, target: Any, probes: Any, gateway_admin: str | None,
               before: dict[str, float] | None, dump: dict[str, Any]) -> Hop:
    from trustdomain import PeerRefused, PeerRole, TrustDomain, verify_peer
    name = "trust"
    tls = view.snapshot.tls
    bundles = tls.bundles if tls is not None else _bundles(dump, probes)
    svid = tls.svid if tls is not None and view.credentials else None
    hs = probes.handshake(target.authority, target.sni, svid)
    if hs.error is not None:
        why = ""
        if gateway_admin is not None and before is not None:
            after = _refusals(probes.admin(gateway_admin, "/metrics"))
            grew = [r for r, n in after.items() if n > before.get(r, 0)]
            why = f"; the gateway counted a refusal: {', '.join(grew)}" if grew else ""
        return fail(name, f"TLS handshake with {target.authority} (SNI {target.sni}) failed: {hs.error}{why}",
                    "the peer closed or hung before presenting a certificate: see the gateway's and the server "
                    "sidecar's logs")
    if bundles is None:
        return fail(name, "the client's trust bundles cannot be read", "run as the user that ran 'fedctl up'")
    try:
        peer = verify_peer(list(hs.chain), bundles, dt.datetime.now(dt.timezone.utc), PeerRole.SERVER)
    except PeerRefused as exc:
        trusted = ", ".join(td.name for td in bundles.trust_domains)
        return fail(name, f"the server's certificate is refused: {exc} (the client trusts: {trusted})",
                    "the server's trust domain is not one the client holds a bundle for: link the clusters "
                    "('fedctl link', which exchanges bundles) or share their root", reason=exc.reason.value)
    e = target.endpoint
    expected = client.trust_domains.get(e.cluster) if e.cluster else None
    if expected and bundles.canonical(peer.trust_domain) != bundles.canonical(TrustDomain(expected)):
        return fail(name, f"the server presented {peer}, expected trust domain {expected!r} of cluster {e.cluster}",
                    "an endpoint answers with another cluster's identity: traffic reaches the wrong gateway or "
                    "endpoint", spiffeId=str(peer))
    me = f"presenting {svid.spiffe_id}" if svid is not None else "without a client certificate (key not readable)"
    account = f" (service account {e.service_account})" if e.service_account else ""
    return ok(name, f"server {peer}{account} chains to the bundle of {peer.trust_domain.name}; handshake "
                    f"{me}, ALPN {hs.alpn or '-'}", spiffeId=str(peer), clientCertificate=svid is not None)


def _bundles(dump: dict[str, Any], probes: Any) -> Any:
    """The client's bundles from the files its dump names, when its key cannot be read."""
    from trustdomain import Bundle, BundleSet, TrustDomain
    out = []
    for domain, file in ((dump.get("tls") or {}).get("bundles") or {}).items():
        text = probes.read_text(file)
        if text is not None:
            out.append(Bundle.from_pem(TrustDomain(domain), text.encode()))
    return BundleSet.of(*out) if out else None


def _request_hop(client: Any, res: Resolution, probes: Any, path: str) -> Hop:
    name = "request"
    url = f"http://{res.authority}{path}"
    before = _requests(probes.admin(client.admin, "/metrics"), res.fqdn)
    answer = probes.request(client.outbound, url)
    after = _requests(probes.admin(client.admin, "/metrics"), res.fqdn)
    new = [dict(labels) for labels, n in after.items() if n > before.get(labels, 0)]
    seen = next((l for l in new if l.get("response_code") == str(answer.status)), new[0] if new else {})
    flags = seen.get("response_flags", "-") or "-"
    if answer.status is None:
        return fail(name, f"GET {url} through {client.outbound}: {answer.error}",
                    "the sidecar's outbound listener does not answer: see its log")
    served = (f", served by {seen.get('destination_workload')} in cluster {seen.get('destination_cluster')} as "
              f"{seen.get('destination_principal')}" if seen.get("destination_cluster") else "")
    evidence = f"GET {url} through {client.outbound}: {answer.status}, response flags {flags}{served}"
    if answer.status >= 500 or flags != "-":
        names = ", ".join(f"{f} = {_FLAG_NAMES.get(f, '?')}" for f in flags.split(",") if f != "-")
        body = answer.body.decode("utf-8", "replace").strip()[:120]
        return fail(name, evidence + (f" ({names})" if names else "") + (f": {body}" if body else ""),
                    "the hops above pass but the request does not: read the response flags, the sidecar's log "
                    "and the server's", status=answer.status, flags=flags)
    return ok(name, evidence, status=answer.status, flags=flags)


def _samples(answer: Any, metric: str) -> Iterator[tuple[dict[str, str], float]]:
    if not answer.ok:
        return
    from prometheus_client.parser import text_string_to_metric_families
    try:
        for family in text_string_to_metric_families(answer.body.decode("utf-8", "replace")):
            for s in family.samples:
                if s.name == metric:
                    yield s.labels, s.value
    except ValueError:
        return


def _refusals(answer: Any) -> dict[str, float]:
    return {labels.get("reason", ""): value for labels, value in _samples(answer, "meshfed_eastwest_refused_total")}


def _requests(answer: Any, fqdn: str) -> dict[Any, float]:
    return {tuple(sorted(labels.items())): value for labels, value in _samples(answer, "istio_requests_total")
            if labels.get("destination_service") == fqdn and labels.get("reporter") == "source"}
