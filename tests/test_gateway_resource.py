"""networking.istio.io Gateway: servers, hosts and TLS decoded with Istio's names, and
istioctl's server and TLS checks."""

from __future__ import annotations

import textwrap

import pytest

from topology import Gateway, load_text
from topology._istio_gateway import ServerTLSMode, TLSProtocol


def load(spec: str):
    text = ("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n"
            + textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ") + "\n")
    return load_text(text, "t.yaml")


def findings(spec: str) -> list[str]:
    return [f"{d.path}: {'warning: ' if not d.is_error else ''}{d.message}" for d in load(spec).diagnostics]


def gateway_of(spec: str) -> Gateway:
    result = load(spec)
    assert result.errors == [], result.errors
    return result.resources[0].spec


def test_east_west_gateway_decodes_with_auto_passthrough() -> None:
    gw = gateway_of("""
        selector: {istio: eastwestgateway}
        servers:
        - port: {number: 15443, name: tls, protocol: TLS}
          tls: {mode: AUTO_PASSTHROUGH}
          hosts: ["*.local"]
        """)

    server = gw.servers[0]
    assert gw.selector == {"istio": "eastwestgateway"}
    assert (server.port.number, server.port.name, server.port.protocol) == (15443, "tls", "TLS")
    assert server.tls.mode is ServerTLSMode.AUTO_PASSTHROUGH and server.hosts == ("*.local",)


def test_protocol_is_case_insensitive_and_tls_mode_defaults_to_passthrough() -> None:
    gw = gateway_of("""
        servers:
        - port: {number: 15012, name: tls-istiod, protocol: tls}
          tls: {}
          hosts: ["*"]
        - port: {number: 80, name: http, protocol: HTTP}
          hosts: [bookinfo/reviews.example.com]
          tls: {httpsRedirect: true}
        """)

    assert gw.servers[0].tls.mode is None
    assert gw.servers[0].tls.effective_mode is ServerTLSMode.PASSTHROUGH
    assert gw.servers[1].tls.https_redirect is True


def test_simple_tls_with_credential_and_versions_decodes() -> None:
    gw = gateway_of("""
        servers:
        - port: {number: 443, name: https, protocol: HTTPS}
          hosts: [web.example.com]
          tls:
            mode: SIMPLE
            credentialName: web-cert
            minProtocolVersion: TLSV1_2
            cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256]
        """)

    tls = gw.servers[0].tls
    assert tls.credential_name == "web-cert" and tls.min_protocol_version is TLSProtocol.TLSV1_2


def server(port: str, extra: str = "") -> str:
    return f"servers:\n- port: {port}\n  hosts: [a.example.com]\n{extra}"


ERRORS = [
    ("no_servers",
     "selector: {istio: ingressgateway}\n",
     ["spec.servers: a Gateway needs at least one server"]),
    ("server_without_hosts",
     "servers:\n- port: {number: 80, name: http, protocol: HTTP}\n",
     ["spec.servers[0].hosts: a server needs at least one host"]),
    ("server_without_port",
     "servers:\n- hosts: [a.example.com]\n",
     ["spec.servers[0]: missing required field 'port'"]),
    ("short_host_name",
     "servers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: [reviews]\n",
     ["spec.servers[0].hosts[0]: invalid host 'reviews': short names (non FQDN) are not allowed"]),
    ("partial_wildcard_host",
     "servers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: ['*foo.example.com']\n",
     ["spec.servers[0].hosts[0]: invalid host '*foo.example.com': partial wildcard '*foo.example.com' is not allowed"]),
    ("invalid_namespace_in_host",
     "servers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: ['Bad_NS/a.example.com']\n",
     ["spec.servers[0].hosts[0]: invalid host 'Bad_NS/a.example.com': invalid namespace 'Bad_NS'"]),
    ("https_without_tls",
     server("{number: 443, name: https, protocol: HTTPS}"),
     ["spec.servers[0].tls: HTTPS servers need tls settings"]),
    ("tcp_with_tls",
     server("{number: 31400, name: tcp, protocol: TCP}", "  tls: {mode: SIMPLE, credentialName: c}\n"),
     ["spec.servers[0].tls: TCP servers cannot have tls settings"]),
    ("plain_http_terminating_tls",
     server("{number: 80, name: http, protocol: HTTP}", "  tls: {mode: SIMPLE, credentialName: c}\n"),
     ["spec.servers[0].tls: plain-text HTTP servers can only use tls.httpsRedirect"]),
    ("unsupported_protocol",
     server("{number: 80, name: x, protocol: QUIC}"),
     ["spec.servers[0].port.protocol: unsupported protocol; found string 'QUIC'; supported are HTTP, HTTPS, "
      "HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP, TLS"]),
    ("port_out_of_range_without_name",
     server("{number: 70000, protocol: HTTP}"),
     ["spec.servers[0].port.number: port number must be in the range 1..65535; found integer 70000",
      "spec.servers[0].port: missing required field 'name'"]),
    ("target_port_on_gateway",
     server("{number: 80, name: http, protocol: HTTP, targetPort: 8080}"),
     ["spec.servers[0].port.targetPort: targetPort has no effect on a Gateway; remove it"]),
    ("invalid_bind",
     server("{number: 80, name: http, protocol: HTTP}", "  bind: localhost\n"),
     ["spec.servers[0].bind: must be an IP address or unix:// path; found string 'localhost'"]),
    ("duplicate_port_names",
     "servers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: [a.example.com]\n"
     "- port: {number: 8080, name: http, protocol: HTTP}\n  hosts: [b.example.com]\n",
     ["spec.servers[1].port.name: duplicate port name 'http'; servers[0] uses it already (names must be unique)"]),
    ("simple_tls_without_certificate",
     server("{number: 443, name: https, protocol: HTTPS}", "  tls: {mode: SIMPLE}\n"),
     ["spec.servers[0].tls.serverCertificate: SIMPLE TLS needs serverCertificate (or credentialName)",
      "spec.servers[0].tls.privateKey: SIMPLE TLS needs privateKey (or credentialName)"]),
    ("mutual_tls_without_ca",
     server("{number: 443, name: https, protocol: HTTPS}",
            "  tls: {mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem}\n"),
     ["spec.servers[0].tls.caCertificates: MUTUAL TLS needs caCertificates (the client CA bundle) or credentialName"]),
    ("istio_mutual_with_certificate",
     server("{number: 443, name: https, protocol: HTTPS}", "  tls: {mode: ISTIO_MUTUAL, serverCertificate: /c.pem}\n"),
     ["spec.servers[0].tls.serverCertificate: ISTIO_MUTUAL uses the mesh certificates; remove this field"]),
    ("two_certificate_sources",
     server("{number: 443, name: https, protocol: HTTPS}",
            "  tls: {mode: SIMPLE, credentialName: c, serverCertificate: /c.pem, privateKey: /k.pem}\n"),
     ["spec.servers[0].tls: only one of credentialName, credentialNames, serverCertificate/privateKey and "
      "tlsCertificates may be set"]),
    ("crl_with_simple_tls",
     server("{number: 443, name: https, protocol: HTTPS}",
            "  tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem, caCrl: /crl.pem}\n"),
     ["spec.servers[0].tls.caCrl: is not supported with SIMPLE TLS"]),
    ("min_version_above_max",
     server("{number: 443, name: https, protocol: HTTPS}",
            "  tls: {mode: SIMPLE, credentialName: c, minProtocolVersion: TLSV1_3, maxProtocolVersion: TLSV1_2}\n"),
     ["spec.servers[0].tls.minProtocolVersion: is above maxProtocolVersion; found TLSV1_3 > TLSV1_2"]),
    ("unknown_tls_mode",
     server("{number: 443, name: https, protocol: HTTPS}", "  tls: {mode: STRICT}\n"),
     ["spec.servers[0].tls.mode: must be one of PASSTHROUGH, SIMPLE, MUTUAL, AUTO_PASSTHROUGH, ISTIO_MUTUAL, "
      "OPTIONAL_MUTUAL; found string 'STRICT'"]),
]


@pytest.mark.parametrize("spec,expected", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_invalid_gateway_reports_exact_message(spec: str, expected: list[str]) -> None:
    assert findings(spec) == expected


WARNINGS = [
    ("passthrough_ignores_certificates",
     server("{number: 443, name: tls, protocol: TLS}", "  tls: {mode: PASSTHROUGH, serverCertificate: /c.pem}\n"),
     ["spec.servers[0].tls.mode: warning: PASSTHROUGH does not terminate TLS; the certificates are ignored"]),
    ("invalid_cipher_suites",
     server("{number: 443, name: https, protocol: HTTPS}",
            "  tls: {mode: SIMPLE, credentialName: c, cipherSuites: [NOPE, AES128-SHA]}\n"),
     ["spec.servers[0].tls.cipherSuites: warning: ignoring invalid cipher suites: NOPE"]),
    ("https_redirect_on_tls_server",
     server("{number: 443, name: tls, protocol: TLS}", "  tls: {httpsRedirect: true}\n"),
     ["spec.servers[0].tls.httpsRedirect: warning: httpsRedirect only applies to HTTP servers"]),
]


@pytest.mark.parametrize("spec,expected", [c[1:] for c in WARNINGS], ids=[c[0] for c in WARNINGS])
def test_questionable_gateway_loads_with_a_warning(spec: str, expected: list[str]) -> None:
    result = load(spec)

    assert result.errors == [] and len(result.resources) == 1
    assert findings(spec) == expected


def test_kubernetes_gateway_api_gateway_is_not_mistaken_for_istios() -> None:
    text = ("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\n"
            "spec: {gatewayClassName: istio, listeners: [{name: http, port: 80, protocol: HTTP}]}\n")

    result = load_text(text, "k8s.yaml")

    assert result.errors == [] and [s.kind for s in result.skipped] == ["Gateway"]
