"""What a proxy loads at start: heavy dependencies wait until a feature needs them.

A sidecar's idle memory is mostly the modules it imported. cryptography (~9 MB resident)
is for a proxy with a certificate, prometheus_client (~2 MB) for the first ``/metrics``
scrape; ``fedctl proxy`` imports no other command. Each check runs in a fresh
interpreter, since this test process has long imported everything.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import prometheus_client
import pytest

import trustdomain
from gateway._metrics import CONTENT_TYPE

PLAIN_CONFIG = """\
apiVersion: meshfed.io/v1alpha1
kind: ProxyConfig
metadata: {name: plain}
spec:
  version: "1"
  node: {cluster: east, namespace: demo, workload: client, serviceAccount: client, trustDomain: east.example,
          labels: {app: client}}
  listeners: {outbound: '127.0.0.1:0', admin: '127.0.0.1:0'}
  services:
  - hostname: echo.demo.svc.cluster.local
    namespace: demo
    ports: [{name: http, port: 80, protocol: http, targetPort: 8080}]
    endpoints:
    - {address: 127.0.0.1, port: 8080, proxyPort: 0, labels: {app: echo}, cluster: east, serviceAccount: echo}
"""


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_proxy_without_certificate_loads_neither_cryptography_nor_prometheus_client(tmp_path) -> None:
    config = tmp_path / "plain.yaml"
    config.write_text(PLAIN_CONFIG)
    out = run_python(f"""
        import sys
        from federation.cli import PROXY_COMMAND, build_parser
        build_parser(PROXY_COMMAND)
        from gateway._config import load_proxy_config
        from gateway._proxy import Proxy
        config, _ = load_proxy_config({str(config)!r})
        proxy = Proxy(config)
        print(sorted(m for m in ("cryptography", "prometheus_client", "federation._cli_ca", "federation._cli_up")
                     if m in sys.modules))
        text = proxy.metrics.render().decode()
        print("prometheus_client" in sys.modules, "meshfed_config_applied_total 1.0" in text)
    """)
    assert out.splitlines() == ["[]", "True True"]


def test_trustdomain_loads_a_submodule_on_first_use_of_one_of_its_names() -> None:
    out = run_python("""
        import sys
        import trustdomain
        from trustdomain import SpiffeId, TrustDomainError
        print("cryptography" in sys.modules, SpiffeId.parse("spiffe://a.example/ns/x/sa/y").trust_domain.name)
        from trustdomain import X509Svid
        print("cryptography" in sys.modules, X509Svid.__module__)
    """)
    assert out.splitlines() == ["False a.example", "True trustdomain._svid"]


def test_trustdomain_exports_every_name_and_refuses_unknown_ones() -> None:
    assert all(getattr(trustdomain, name) is not None for name in trustdomain.__all__)
    assert set(trustdomain.__all__) <= set(dir(trustdomain))
    with pytest.raises(AttributeError, match="module 'trustdomain' has no attribute 'NoSuchThing'"):
        trustdomain.NoSuchThing  # noqa: B018


def test_metrics_content_type_is_prometheus_clients_text_format() -> None:
    assert CONTENT_TYPE == prometheus_client.CONTENT_TYPE_LATEST
