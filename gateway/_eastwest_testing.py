"""Multi-network pieces for tests and benchmarks: a "cluster" on its own 127.a.b block with
an east-west gateway and apps behind sidecars, and a client sidecar that reaches it.

``start_site`` runs, in the caller's nursery, one EchoApp per instance asked for, a
server sidecar in front of each (its own trust domain, shared root) and, unless told
otherwise, the site's east-west gateway at ``<block>.2:15443`` exporting the service. A
site's ``gateway_entry(...)`` and ``local_entry(...)`` are the endpoint lines a client
document lists for it (the representation the control plane emits: one entry per
cluster, locality and label set behind a gateway); ``start_client`` writes and runs the
client sidecar. Services are all ``echo.demo.svc.cluster.local:8080``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

FQDN = "echo.demo.svc.cluster.local"
SERVICE_PORT = 8080
EASTWEST_PORT = 15443


@dataclass
class Instance:
    """One app and its sidecar in a site."""

    name: str
    address: str
    app_port: int
    labels: dict[str, str]
    app: Any
    sidecar: Any
    config: Path


@dataclass
class Site:
    """A cluster of a multi-network test (see the module docstring)."""

    cluster: str
    block: str
    network: str
    locality: str
    trust_domain: str
    instances: list[Instance] = field(default_factory=list)
    gateway: Any = None
    gateway_config: Path | None = None

    @property
    def gateway_address(self) -> str:
        return f"{self.block}.2:{EASTWEST_PORT}"

    def local_entry(self, inst: Instance) -> str:
        """The endpoint line for ``inst`` in a client document of the same network."""
        return (f"{{address: {inst.address}, port: {inst.app_port}, servicePort: {SERVICE_PORT}, proxyPort: 15006, "
                f"labels: {_flow(inst.labels)}, locality: {self.locality}, cluster: {self.cluster}, "
                f"network: {self.network}, serviceAccount: {inst.name}}}")

    def gateway_entry(self, labels: dict[str, str] | None = None, weight: int | None = None) -> str:
        """The entry standing for this site's instances carrying ``labels`` (all by default),
        weighted by their number unless ``weight`` is given."""
        labels = labels or {}
        n = sum(1 for i in self.instances if all(i.labels.get(k) == v for k, v in labels.items()))
        host, port = self.gateway_address.rsplit(":", 1)
        return (f"{{address: {host}, port: {port}, gateway: \"{self.gateway_address}\", servicePort: {SERVICE_PORT}, "
                f"labels: {_flow(labels)}, locality: {self.locality}, cluster: {self.cluster}, "
                f"network: {self.network}, weight: {weight or max(n, 1)}}}")


def _flow(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in labels.items()) + "}"


def _tls(certs: dict[str, Path], domains: tuple[str, ...]) -> str:
    bundles = ", ".join(f"{d}: {certs['root']}" for d in domains)
    return (f"  tls: {{cert: {certs['cert']}, key: {certs['key']}, chain: {certs['chain']}, "
            f"bundles: {{{bundles}}}}}")


async def start_proxy(nursery: trio.Nursery, path: Path) -> Any:
    """Load the document at ``path`` and run a Proxy for it in ``nursery``."""
    from ._config import load_proxy_config
    from ._proxy import Proxy

    loaded, diagnostics = load_proxy_config(str(path))
    assert loaded is not None, [str(d) for d in diagnostics]
    proxy = Proxy(loaded)
    await nursery.start(proxy.run)
    return proxy


async def start_site(nursery: trio.Nursery, pki: Any, folder: Path, *, cluster: str, block: str, network: str,
                     locality: str, trust_domain: str, domains: tuple[str, ...],
                     instances: tuple[tuple[str, dict[str, str]], ...] = (("echo", {"app": "echo"}),),
                     gateway: bool = True, exported: bool = True, gateway_resources: str = "[]",
                     gateway_limits: str = "") -> Site:
    """Apps, sidecars and (``gateway``) the east-west gateway of one site; ``domains`` are
    the trust domains whose bundles every sidecar holds."""
    from .testing import EchoApp

    site = Site(cluster, block, network, locality, trust_domain)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, labels) in enumerate(instances):
        address = f"{block}.{10 + i}"
        app = EchoApp(name)
        _, app_port = await nursery.start(app.serve, address)
        certs = pki.write_svid(pki.svid(trust_domain, "demo", name), folder / f"{name}-certs")
        path = folder / f"{name}.yaml"
        path.write_text(f"""apiVersion: meshfed.io/v1alpha1
kind: ProxyConfig
metadata: {{name: {name}}}
spec:
  node: {{cluster: {cluster}, namespace: demo, workload: {name}, serviceAccount: {name}, trustDomain: {trust_domain},
          labels: {_flow(labels)}, locality: {locality}, network: {network}}}
  listeners: {{inbound: "{address}:15006", admin: "{address}:15000"}}
  app: {{address: {address}, ports: [{{port: {app_port}, protocol: http}}]}}
{_tls(certs, domains)}
  services:
  - hostname: {FQDN}
    namespace: demo
    ports: [{{name: http, port: {SERVICE_PORT}, protocol: http, targetPort: {app_port}}}]
""")
        sidecar = await start_proxy(nursery, path)
        site.instances.append(Instance(name, address, app_port, labels, app, sidecar, path))
    if gateway:
        endpoints = "".join(f"\n    - {site.local_entry(inst)}" for inst in site.instances)
        path = folder / "eastwest.yaml"
        path.write_text(f"""apiVersion: meshfed.io/v1alpha1
kind: ProxyConfig
metadata: {{name: eastwest-{cluster}}}
spec:
  node: {{cluster: {cluster}, namespace: istio-system, workload: istio-eastwestgateway, role: eastwest,
          locality: {locality}, network: {network}, trustDomain: {trust_domain}}}
  listeners: {{eastwest: "{site.gateway_address}", admin: "{block}.2:15000"}}
  services:
  - hostname: {FQDN}
    namespace: demo
    exported: {str(exported).lower()}
    ports: [{{name: http, port: {SERVICE_PORT}, protocol: http}}]
    endpoints:{endpoints or " []"}
  resources: {gateway_resources}
{gateway_limits}""")
        site.gateway_config = path
        site.gateway = await start_proxy(nursery, path)
    return site


async def start_client(nursery: trio.Nursery, pki: Any, folder: Path, *, site: Site, endpoints: list[str],
                       resources: str = "[]", name: str = "client", domains: tuple[str, ...] | None = None) -> Any:
    """The client sidecar of ``site`` (outbound at ``<block>.1:15001``) with ``endpoints`` for the service."""
    path = client_config(pki, folder, site=site, endpoints=endpoints, resources=resources, name=name,
                         domains=domains)
    return await start_proxy(nursery, path)


def client_config(pki: Any, folder: Path, *, site: Site, endpoints: list[str], resources: str = "[]",
                  name: str = "client", version: str = "1", domains: tuple[str, ...] | None = None) -> Path:
    """Write the client sidecar's document (certificates included); returns its path."""
    domains = domains or (site.trust_domain,)
    folder.mkdir(parents=True, exist_ok=True)
    certs = pki.write_svid(pki.svid(site.trust_domain, "demo", name), folder / f"{name}-certs")
    lines = "".join(f"\n    - {e}" for e in endpoints)
    path = folder / f"{name}.yaml"
    path.write_text(f"""apiVersion: meshfed.io/v1alpha1
kind: ProxyConfig
metadata: {{name: {name}}}
spec:
  version: "{version}"
  node: {{cluster: {site.cluster}, namespace: demo, workload: {name}, serviceAccount: {name},
          trustDomain: {site.trust_domain}, labels: {{app: {name}}}, locality: {site.locality},
          network: {site.network}}}
  listeners: {{outbound: "{site.block}.1:15001", admin: "{site.block}.1:15000"}}
{_tls(certs, domains)}
  services:
  - hostname: {FQDN}
    namespace: demo
    ports: [{{name: http, port: {SERVICE_PORT}, protocol: http}}]
    endpoints:{lines or " []"}
  resources: {resources}
""")
    return path
