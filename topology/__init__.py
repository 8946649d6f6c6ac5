"""The mesh model: clusters, workloads, Istio resources, validation and the service registry.

Pure: no sockets, no clocks except injected ones.
"""

from ._decode import Check, Decoder, opt
from ._duration import Duration
from ._errors import ConfigError, Diagnostic, RegistryError, Severity, TopologyError
from ._loader import LoadResult, Skipped, load_file, load_paths, load_text
from ._resource import KINDS, ObjectMeta, Resource, register_kind

__all__ = [
    "Check", "ConfigError", "Decoder", "Diagnostic", "Duration", "KINDS", "LoadResult",
    "ObjectMeta", "RegistryError", "Resource", "Severity", "Skipped", "TopologyError",
    "load_file", "load_paths", "load_text", "opt", "register_kind",
]

from . import _kinds_extra  # noqa: E402,F401  registers security, Kubernetes, MCS and Mesh kinds
from ._kube import DeploymentSpec, ServiceAccountBody, ServiceSpec, StatefulSetSpec  # noqa: E402
from ._mcs import ServiceExportSpec  # noqa: E402
from ._mesh import Cluster, DemoApp, Mesh, Workload, WorkloadPort, WorkloadProtocol  # noqa: E402
from ._security import AuthorizationPolicy, PeerAuthentication, RequestAuthentication  # noqa: E402

__all__ += [
    "AuthorizationPolicy", "Cluster", "DemoApp", "DeploymentSpec", "Mesh", "PeerAuthentication",
    "RequestAuthentication", "ServiceAccountBody", "ServiceExportSpec", "ServiceSpec", "StatefulSetSpec",
    "Workload", "WorkloadPort", "WorkloadProtocol",
]

from . import _networking  # noqa: E402,F401  registers the kinds
from ._destinationrule import DestinationRule, Subset  # noqa: E402
from ._http_route import HTTPMatchRequest, HTTPRoute, HTTPRouteDestination  # noqa: E402
from ._istio_gateway import Gateway, Server, ServerTLSSettings  # noqa: E402
from ._istio_types import Destination, Percent, PortSelector, StringMatch  # noqa: E402
from ._serviceentry import ServiceEntry, WorkloadEntry  # noqa: E402
from ._sidecar import Sidecar  # noqa: E402
from ._traffic_policy import TrafficPolicy  # noqa: E402
from ._virtualservice import TCPRoute, TLSRoute, VirtualService  # noqa: E402

__all__ += [
    "Destination", "DestinationRule", "Gateway", "HTTPMatchRequest", "HTTPRoute", "HTTPRouteDestination",
    "Percent", "PortSelector", "Server", "ServerTLSSettings", "ServiceEntry", "Sidecar", "StringMatch", "Subset",
    "TCPRoute", "TLSRoute", "TrafficPolicy", "VirtualService", "WorkloadEntry",
]

from ._endpoint import Endpoint, Labels, Locality, Service, ServicePort, UndeclaredPortError  # noqa: E402
from ._hostname import Hostname, InvalidHostnameError, InvalidValueError  # noqa: E402
from ._registry import RegistryBuilder, ServiceRegistry, UnknownEndpointError, UnknownServiceError  # noqa: E402
from ._registry_build import AddressBlockFullError, Placement, build_registry, placements  # noqa: E402

__all__ += [
    "AddressBlockFullError", "Endpoint", "Hostname", "InvalidHostnameError", "InvalidValueError", "Labels",
    "Locality", "Placement", "RegistryBuilder", "Service", "ServicePort", "ServiceRegistry", "UndeclaredPortError",
    "UnknownEndpointError", "UnknownServiceError", "build_registry", "placements",
]
