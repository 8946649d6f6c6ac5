"""The servers the data-plane benchmark measures through, each started as its own process.

One loopback block ``127.a.b`` per run (``.1`` the client side, ``.2`` the app and the
server side, ``.3`` the single sidecar), so a run never collides with the test suite
(which takes ``127.100-250.x``) or with another run.

* app: Debian's nginx, one process (``master_process off``, so the PID we hold is the one
  that serves and the one we stop), answering every request with a 20-byte body, as in
  the HAProxy reference's measurements.
* haproxy_pair: the reference pair (``shared/reference/haproxy-sidecar-pair``) verbatim but
  for addresses and certificate paths: plain HTTP in, TLS 1.3 mTLS with SNI and ALPN h2
  between the two, plain HTTP/1.1 to the app. Its outbound listener is a reverse proxy
  with one backend, so clients send origin-form requests (``GET / HTTP/1.1``).
* sidecar / sidecar_pair: ``fedctl proxy --config FILE``, the way users run a meshfed proxy.
  Their outbound listener is an explicit proxy, so clients send absolute-form requests
  (``GET http://echo.bench.svc.cluster.local:80/ HTTP/1.1``) as ``HTTP_PROXY`` clients do.

Certificates come from meshfed's own CA (``trustdomain.testing.MeshPki``: a root and an
intermediate for the trust domain); HAProxy gets each SVID as certificate, intermediates
and key in one file, as its ``crt`` wants.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from _load import absolute_form_request, origin_form_request
from _procstat import Processes, Started, wait_for_line, wait_listening

APP_PORT = 18080
HAPROXY_OUT_PORT = 18380
HAPROXY_IN_PORT = 18343
OUTBOUND_PORT, INBOUND_PORT, ADMIN_PORT = 15001, 15006, 15000
SERVICE = "echo.bench.svc.cluster.local"
SERVICE_PORT = 80
TRUST_DOMAIN = "bench.meshfed.local"
HAPROXY_SNI = "server.mesh.local"
BODY = b"0123456789abcdefghi\n"  # 20 bytes, the reference's upstream body


@dataclass(frozen=True)
class Layout:
    block: str
    """``127.a.b``: the run's loopback block."""

    @property
    def client(self) -> str:
        return f"{self.block}.1"

    @property
    def server(self) -> str:
        return f"{self.block}.2"

    @property
    def single(self) -> str:
        return f"{self.block}.3"


@dataclass(frozen=True)
class Target:
    """Where load goes for one scenario and which processes are the proxies measured."""

    host: str
    port: int
    request: bytes
    wrk_path: str | None
    """The request target wrk sends (absolute-form URL), or None for its default ``/``."""
    proxies: tuple[Started, ...]

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(p.pid for p in self.proxies)

    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"


def write_certs(folder: Path) -> dict[str, dict[str, Path]]:
    """SVIDs for the client and server side, with HAProxy bundles and ``ca.pem`` beside them."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from trustdomain.testing import MeshPki

    pki = MeshPki.shared_root(TRUST_DOMAIN)
    out: dict[str, dict[str, Path]] = {}
    for side, sa in (("client", "client"), ("server", "echo")):
        files = pki.write_svid(pki.svid(TRUST_DOMAIN, "bench", sa, dns_names=(HAPROXY_SNI,)), folder / side)
        bundle = folder / f"{side}-sidecar.bundle.pem"
        bundle.write_bytes(files["cert"].read_bytes() + files["chain"].read_bytes() + files["key"].read_bytes())
        files["bundle"] = bundle
        out[side] = files
    (folder / "ca.pem").write_bytes(out["client"]["root"].read_bytes())
    return out


NGINX_CONF = """\
worker_processes 1;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_temp_path {dir}/t-body;
  proxy_temp_path {dir}/t-proxy;
  fastcgi_temp_path {dir}/t-fastcgi;
  uwsgi_temp_path {dir}/t-uwsgi;
  scgi_temp_path {dir}/t-scgi;
  server {{
    listen {host}:{port};
    location / {{ default_type text/plain; return 200 "{body}"; }}
  }}
}}
"""


def start_app(procs: Processes, folder: Path, layout: Layout) -> Started:
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=folder, host=layout.server, port=APP_PORT,
                                      body=BODY.decode().replace("\n", "\\n")))
    app = procs.start("nginx", ["nginx", "-p", str(folder), "-e", str(folder / "nginx-error.log"),
                                "-c", str(conf), "-g", "daemon off;"])
    wait_listening(app, layout.server, APP_PORT)
    return app


def direct_target(layout: Layout, app: Started) -> Target:
    return Target(layout.server, APP_PORT, origin_form_request(SERVICE), None, ())


HAPROXY_COMMON = """\
global
  nbthread 1
  maxconn 8000
  {ssl_default} ssl-min-ver TLSv1.3
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse safe
"""
HAPROXY_OUTBOUND = """\
frontend outbound
  bind {out}
  default_backend to_peer
backend to_peer
  server peer {inb} ssl verify required ca-file {certs}/ca.pem crt {certs}/client-sidecar.bundle.pem \
sni str({sni}) verifyhost {sni} alpn h2
"""
HAPROXY_INBOUND = """\
frontend inbound
  bind {inb} ssl crt {certs}/server-sidecar.bundle.pem ca-file {certs}/ca.pem verify required alpn h2,http/1.1
  default_backend app
backend app
  server app {app}
"""


def haproxy_configs(certs: Path, layout: Layout) -> tuple[str, str]:
    """(outbound.cfg, inbound.cfg) of the reference pair for this layout."""
    values = dict(out=f"{layout.client}:{HAPROXY_OUT_PORT}", inb=f"{layout.server}:{HAPROXY_IN_PORT}",
                  app=f"{layout.server}:{APP_PORT}", certs=certs, sni=HAPROXY_SNI)
    return (HAPROXY_COMMON.format(ssl_default="ssl-default-server-options") + HAPROXY_OUTBOUND.format(**values),
            HAPROXY_COMMON.format(ssl_default="ssl-default-bind-options") + HAPROXY_INBOUND.format(**values))


def start_haproxy_pair(procs: Processes, folder: Path, certs: Path, layout: Layout) -> Target:
    outbound, inbound = haproxy_configs(certs, layout)
    (folder / "inbound.cfg").write_text(inbound)
    (folder / "outbound.cfg").write_text(outbound)
    inb = procs.start("haproxy-inbound", ["haproxy", "-db", "-f", str(folder / "inbound.cfg")])
    wait_listening(inb, layout.server, HAPROXY_IN_PORT)
    out = procs.start("haproxy-outbound", ["haproxy", "-db", "-f", str(folder / "outbound.cfg")])
    wait_listening(out, layout.client, HAPROXY_OUT_PORT)
    return Target(layout.client, HAPROXY_OUT_PORT, origin_form_request(SERVICE), None, (out, inb))


def proxy_config(name: str, *, workload: str, sa: str, listeners: str, endpoint_host: str, proxy_port: int,
                 tls: dict[str, Path] | None, app: str = "") -> str:
    """A ProxyConfig document (format: gateway/_config.py) for one bench sidecar."""
    tls_line = (f"  tls: {{cert: {tls['cert']}, key: {tls['key']}, chain: {tls['chain']}, "
                f"bundles: {{{TRUST_DOMAIN}: {tls['root']}}}}}\n") if tls else ""
    return f"""apiVersion: meshfed.io/v1alpha1
kind: ProxyConfig
metadata: {{name: {name}}}
spec:
  version: "1"
  node: {{cluster: bench, namespace: bench, workload: {workload}, serviceAccount: {sa}, trustDomain: {TRUST_DOMAIN},
          labels: {{app: {workload}}}}}
  listeners: {{{listeners}}}
{app}{tls_line}  services:
  - hostname: {SERVICE}
    namespace: bench
    ports: [{{name: http, port: {SERVICE_PORT}, protocol: http, targetPort: {APP_PORT}}}]
    endpoints:
    - {{address: {endpoint_host}, port: {APP_PORT}, proxyPort: {proxy_port}, labels: {{app: echo}},
       cluster: bench, serviceAccount: echo}}
"""


def fedctl() -> list[str]:
    found = shutil.which("fedctl")
    return [found] if found else [sys.executable, "-m", "federation"]


def _start_proxy(procs: Processes, folder: Path, name: str, text: str) -> Started:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    proxy = procs.start(name, [*fedctl(), "proxy", "--config", str(path)])
    wait_for_line(proxy, "ready ")
    return proxy


def start_sidecar(procs: Processes, folder: Path, layout: Layout) -> Target:
    """client -> outbound sidecar -> app: one sidecar, the app a plain endpoint (``proxyPort: 0``)."""
    host = layout.single
    text = proxy_config("single", workload="client", sa="client", tls=None, endpoint_host=layout.server,
                        proxy_port=0,
                        listeners=f"outbound: '{host}:{OUTBOUND_PORT}', admin: '{host}:{ADMIN_PORT}'")
    proxy = _start_proxy(procs, folder, "sidecar", text)
    return Target(host, OUTBOUND_PORT, absolute_form_request(f"{SERVICE}:{SERVICE_PORT}"),
                  f"http://{SERVICE}:{SERVICE_PORT}/", (proxy,))


def start_sidecar_pair(procs: Processes, folder: Path, certs: dict[str, dict[str, Path]], layout: Layout) -> Target:
    """client -> outbound sidecar =mTLS=> inbound sidecar -> app."""
    c, s = layout.client, layout.server
    server = _start_proxy(procs, folder, "sidecar-inbound", proxy_config(
        "inbound", workload="echo", sa="echo", tls=certs["server"], endpoint_host=s, proxy_port=INBOUND_PORT,
        listeners=f"inbound: '{s}:{INBOUND_PORT}', admin: '{s}:{ADMIN_PORT}'",
        app=f"  app: {{address: {s}, ports: [{{port: {APP_PORT}, protocol: http}}]}}\n"))
    client = _start_proxy(procs, folder, "sidecar-outbound", proxy_config(
        "outbound", workload="client", sa="client", tls=certs["client"], endpoint_host=s, proxy_port=INBOUND_PORT,
        listeners=f"outbound: '{c}:{OUTBOUND_PORT}', admin: '{c}:{ADMIN_PORT}'"))
    return Target(c, OUTBOUND_PORT, absolute_form_request(f"{SERVICE}:{SERVICE_PORT}"),
                  f"http://{SERVICE}:{SERVICE_PORT}/", (client, server))
