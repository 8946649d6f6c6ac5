"""Control-plane metrics on :15014, in one table, with istiod's names where istiod has one.

Each control plane has its own ``CollectorRegistry`` (several run in one process in
tests and benches, and the process-global default registry would mix them). The
endpoint is a deliberately small HTTP/1.1 responder on trio: ``GET /metrics`` returns
the text exposition, anything else 404; requests are read with a size and time bound.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger("meshfed.federation.metrics")

METRICS_PORT = 15014  # istiod's monitoring port
MAX_REQUEST_HEAD = 8192
REQUEST_TIMEOUT = 5.0
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# name, kind, help (istiod's names: pilot/xds/monitoring.go, security/pkg/server/ca/monitoring.go)
METRICS = (
    ("pilot_xds_pushes", Counter, "Config documents pushed to proxies (label type: proxyconfig)."),
    ("pilot_proxy_convergence_time", Histogram,
     "Seconds from a config file change to the proxy's ACK of the version built from it."),
    ("pilot_xds", Gauge, "Proxies connected and subscribed to this control plane."),
    ("pilot_total_xds_rejects", Counter, "Config versions proxies rejected (NACKs)."),
    ("galley_validation_failed", Counter, "Config changes refused by validation; the previous version stays."),
    ("meshfed_config_version", Gauge, "Number of the config version in force."),
    ("citadel_server_csr_count", Counter, "Certificate signing requests received."),
    ("citadel_server_success_cert_issuance_count", Counter, "Workload certificates issued."),
    ("citadel_server_csr_sign_err_count", Counter, "Certificate signing requests refused."),
)


class ControlPlaneMetrics:
    """The counters the discovery server, config source and CA service record into."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        made: dict[str, Any] = {}
        for name, kind, doc in METRICS:
            if kind is Histogram:
                made[name] = Histogram(name, doc, registry=self.registry, buckets=LATENCY_BUCKETS)
            elif name == "pilot_xds_pushes":
                made[name] = kind(name, doc, ["type"], registry=self.registry)
            else:
                made[name] = kind(name, doc, registry=self.registry)
        self.pushes = made["pilot_xds_pushes"].labels(type="proxyconfig")
        self.push_latency = made["pilot_proxy_convergence_time"]
        self.connected = made["pilot_xds"]
        self.nacks = made["pilot_total_xds_rejects"]
        self.config_errors = made["galley_validation_failed"]
        self.config_version = made["meshfed_config_version"]
        self.csr = made["citadel_server_csr_count"]
        self.issued = made["citadel_server_success_cert_issuance_count"]
        self.csr_refused = made["citadel_server_csr_sign_err_count"]
        self.address: tuple[str, int] | None = None

    def value(self, sample: str, **labels: str) -> float:
        """A sample's current value by exposition name (``pilot_xds_pushes_total``); 0 when absent."""
        return self.registry.get_sample_value(sample, labels) or 0.0

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def serve(self, host: str, port: int = METRICS_PORT, *,
                    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.address = listeners[0].socket.getsockname()[:2]
        task_status.started(self.address)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                head = b""
                while b"\r\n\r\n" not in head:
                    data = await stream.receive_some(4096)
                    if not data or len(head) + len(data) > MAX_REQUEST_HEAD:
                        return
                    head += data
                parts = head.split(b"\r\n", 1)[0].split()
                method, target = (parts[0], parts[1]) if len(parts) >= 2 else (b"", b"")
                if method in (b"GET", b"HEAD") and target.split(b"?", 1)[0] == b"/metrics":
                    body, status, ctype = self.exposition(), b"200 OK", CONTENT_TYPE_LATEST.encode()
                else:
                    body, status, ctype = b"not found; try /metrics\n", b"404 Not Found", b"text/plain"
                response = (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
                            + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n")
                await stream.send_all(response + (body if method != b"HEAD" else b""))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("metrics request failed: %r", exc)
        finally:
            await trio.aclose_forcefully(stream)
