"""Who a demo app is and where its sidecar is, read once from the environment ``fedctl up`` sets.

The apps never look at ``os.environ`` after start: ``AppEnv.from_environ`` is the one place
that reads it, so tests build identities side by side in one process.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .._errors import FederationError

_SECONDS = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(ms|s)?$")


class AppConfigError(FederationError):
    """An environment variable of a demo app holds a value it cannot use."""

    def __init__(self, variable: str, value: str, expected: str) -> None:
        super().__init__(f"{variable}: {expected}; found {value!r}")
        self.variable = variable
        self.value = value


def parse_seconds(variable: str, text: str) -> float:
    """``"3s"``, ``"250ms"`` or a bare number of seconds (``"2.5"``) -> seconds."""
    m = _SECONDS.match(text.strip())
    if m is None:
        raise AppConfigError(variable, text, "must be a duration such as '3s', '2.5s' or '250ms'")
    value = float(m.group(1))
    return value / 1000 if m.group(2) == "ms" else value


@dataclass(frozen=True, slots=True)
class AppEnv:
    """The identity and settings of one demo app instance."""

    app: str
    """Which demo app runs (``echo``, ``reviews``...)."""
    cluster: str = ""
    """``MESHFED_CLUSTER``: the cluster the instance runs in."""
    locality: str = ""
    """``MESHFED_LOCALITY``: ``region/zone/subzone``."""
    version: str = "v1"
    """``MESHFED_VERSION``: the ``version`` label. Defaults to v1."""
    instance: str = ""
    """``MESHFED_INSTANCE``: the instance (pod) name. Defaults to ``<workload>-<pid>``."""
    namespace: str = "default"
    """``MESHFED_NAMESPACE``. Defaults to ``default``."""
    workload: str = ""
    """``MESHFED_WORKLOAD``: the workload name (``reviews-v2``). Defaults to the app's name."""
    address: str = "127.0.0.1"
    """``MESHFED_ADDRESS``: the instance's own address; where it listens unless told otherwise."""
    port: int | None = None
    """``MESHFED_PORT``: the port it listens on unless told otherwise. Defaults to the app's port."""
    http_proxy: str | None = None
    """``HTTP_PROXY`` (or ``http_proxy``): the sidecar's outbound listener, ``http://<sidecar>:15001``."""
    no_proxy: str = ""
    """``NO_PROXY`` (or ``no_proxy``): hosts called directly, comma separated."""
    services_domain: str | None = None
    """``MESHFED_SERVICES_DOMAIN``: domain appended to bookinfo service names, as bookinfo's
    ``SERVICES_DOMAIN``. Defaults to ``<namespace>.svc.cluster.local``."""
    details_timeout: float | None = None
    """``MESHFED_DETAILS_TIMEOUT``: productpage's per-try timeout calling details. Defaults to 3 s."""
    reviews_timeout: float | None = None
    """``MESHFED_REVIEWS_TIMEOUT``: productpage's per-try timeout calling reviews. Defaults to 3 s."""
    ratings_timeout: float | None = None
    """``MESHFED_RATINGS_TIMEOUT``: reviews' timeout calling ratings. Defaults to 10 s (v2), 2.5 s (v3);
    also productpage's for ``/api/v1/products/<id>/ratings`` (3 s)."""
    access_log: bool = False
    """``MESHFED_ACCESS_LOG=1``: print one line per request on stdout."""

    @property
    def domain(self) -> str:
        """Where bookinfo's services live: ``reviews`` + ``.`` + domain."""
        return self.services_domain or f"{self.namespace}.svc.cluster.local"

    @classmethod
    def from_environ(cls, app: str, environ: Mapping[str, str]) -> "AppEnv":
        def get(name: str) -> str | None:
            value = environ.get(name)
            return value if value else None

        def seconds(name: str) -> float | None:
            text = get(name)
            return None if text is None else parse_seconds(name, text)

        port_text = get("MESHFED_PORT")
        port = None
        if port_text is not None:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise AppConfigError("MESHFED_PORT", port_text, "must be a port number 1..65535")
            port = int(port_text)
        workload = get("MESHFED_WORKLOAD") or app
        # curl's precedence: the lowercase variable first.
        proxy = get("http_proxy") or get("HTTP_PROXY")
        return cls(
            app=app,
            cluster=get("MESHFED_CLUSTER") or "",
            locality=get("MESHFED_LOCALITY") or "",
            version=get("MESHFED_VERSION") or "v1",
            instance=get("MESHFED_INSTANCE") or f"{workload}-{os.getpid()}",
            namespace=get("MESHFED_NAMESPACE") or "default",
            workload=workload,
            address=get("MESHFED_ADDRESS") or "127.0.0.1",
            port=port,
            http_proxy=proxy,
            no_proxy=get("no_proxy") or get("NO_PROXY") or "",
            services_domain=get("MESHFED_SERVICES_DOMAIN"),
            details_timeout=seconds("MESHFED_DETAILS_TIMEOUT"),
            reviews_timeout=seconds("MESHFED_REVIEWS_TIMEOUT"),
            ratings_timeout=seconds("MESHFED_RATINGS_TIMEOUT"),
            access_log=(get("MESHFED_ACCESS_LOG") or "0") not in ("0", "false", "no"),
        )
