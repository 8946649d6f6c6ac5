"""``fedctl check`` and ``fedctl explain``: a request's path and policy, as one client sees them.

Both act on the mesh of ``fedctl up`` (DIR, or the last one started) and start from one
instance of the ``--from`` workload: its sidecar's admin names the document in force,
which is compiled with the gateway package (``_check_view``) so that what is printed is
what that proxy does. ``check`` then probes the remaining hops over the network
(``_check``, ``_check_remote``); ``explain`` only reads (``_explain``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ._errors import FederationError


def register(sub: Any) -> None:
    p = sub.add_parser("check", help="walk every hop of a request to SERVICE and name the first that fails",
                       description="Walk a request from CLUSTER/WORKLOAD to SERVICE hop by hop - the client "
                                   "sidecar and its config, the service, route, DestinationRule and locality it "
                                   "resolves to, the endpoint or remote gateway and the SNI, the gateway, the "
                                   "server sidecar, the TLS trust between them, and a real request - and name "
                                   "the first hop that fails. Exit 0 when every hop is ok, 1 otherwise.")
    p.add_argument("service", metavar="SERVICE", help="as the client writes it: NAME.NAMESPACE, or the FQDN")
    p.add_argument("--from", dest="source", required=True, metavar="CLUSTER/WORKLOAD",
                   help="or CLUSTER/NAMESPACE/WORKLOAD")
    p.add_argument("--port", type=int, metavar="P", help="service port (default: its only or first HTTP port)")
    p.add_argument("--path", default="/", help="path of the request sent at the end (default /)")
    p.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS",
                   help="per probe (connects, admin pages, handshake); the request gets 5x (default 2)")
    p.add_argument("--dir", metavar="DIR", help="default: the mesh of the last 'fedctl up'")
    p.add_argument("--output", "-o", choices=("text", "json"), default="text")
    p.set_defaults(func=run_check)

    p = sub.add_parser("explain", help="the effective routing and traffic policy of SERVICE as a workload sees it",
                       description="Print the VirtualService routes (weights), the DestinationRule traffic policy "
                                   "(Istio's defaults shown), retries and timeouts in force, and the locality "
                                   "priorities from the client's locality with their endpoints, gateways, weights "
                                   "and health - computed from the client sidecar's own document.")
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("--from", dest="source", required=True, metavar="CLUSTER/WORKLOAD")
    p.add_argument("--port", type=int, metavar="P")
    p.add_argument("--dir", metavar="DIR", help="default: the mesh of the last 'fedctl up'")
    p.add_argument("--output", "-o", choices=("text", "json"), default="text")
    p.set_defaults(func=run_explain)


def _client(args: argparse.Namespace) -> Any:
    from ._check import Client
    from ._cli_up import find_instance
    from ._state import read_state, resolve_dir
    state = read_state(resolve_dir(args.dir))
    inst = find_instance(state, args.source)
    domains = {c.name: c.trust_domain for c in state.clusters}
    return Client(f"{inst.cluster}/{inst.namespace}/{inst.workload} ({inst.instance})", inst.admin, inst.outbound,
                  domains)


def run_check(args: argparse.Namespace) -> int:
    from ._check import check
    from ._check_probe import LiveProbes
    client = _client(args)
    report = check(client, args.service, args.port, LiveProbes(args.timeout, args.timeout * 5), args.path)
    if args.output == "json":
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(report.to_text())
    return 0 if report.ok else 1


def run_explain(args: argparse.Namespace) -> int:
    from ._check import load_client_view
    from ._check_probe import LiveProbes
    from ._explain import explain, explain_text
    client = _client(args)
    view, hop, _ = load_client_view(client, LiveProbes())
    if view is None:
        raise FederationError(f"{client.source}: {hop.evidence}; {hop.hint}")
    doc = explain(view, args.service, args.port, client.source)
    if args.output == "json":
        print(json.dumps(doc, indent=1))
    else:
        print(explain_text(doc))
    return 0
