"""Registers the kinds other than Istio networking: security, Kubernetes, MCS, and meshfed's Mesh.

Importing this module (``topology/__init__`` does) is what makes the loader know them.
"""

from __future__ import annotations

from ._kube import DeploymentSpec, ServiceAccountBody, ServiceSpec, StatefulSetSpec
from ._mcs import ServiceExportSpec
from ._mesh import Mesh
from ._ratelimit import RateLimitSpec
from ._resource import register_kind
from ._security import AuthorizationPolicy, PeerAuthentication, RequestAuthentication
from ._workload_fault import WorkloadFaultSpec

SECURITY_VERSIONS = frozenset({"v1beta1", "v1"})
"""security.istio.io versions served (v1 since Istio 1.22; v1beta1 still served)."""

register_kind("security.istio.io", "PeerAuthentication", SECURITY_VERSIONS, PeerAuthentication)
register_kind("security.istio.io", "AuthorizationPolicy", SECURITY_VERSIONS, AuthorizationPolicy)
register_kind("security.istio.io", "RequestAuthentication", SECURITY_VERSIONS, RequestAuthentication)

register_kind("", "Service", {"v1"}, ServiceSpec, spec_required=True)
register_kind("", "ServiceAccount", {"v1"}, None, body=ServiceAccountBody)
register_kind("apps", "Deployment", {"v1"}, DeploymentSpec, spec_required=True)
register_kind("apps", "StatefulSet", {"v1"}, StatefulSetSpec, spec_required=True)

register_kind("multicluster.x-k8s.io", "ServiceExport", {"v1alpha1"}, ServiceExportSpec)

register_kind("meshfed.io", "Mesh", {"v1alpha1"}, Mesh, spec_required=True)
register_kind("meshfed.io", "RateLimit", {"v1alpha1"}, RateLimitSpec, spec_required=True)
register_kind("meshfed.io", "WorkloadFault", {"v1alpha1"}, WorkloadFaultSpec, spec_required=True)

KINDS_EXTRA = (
    ("security.istio.io", "PeerAuthentication"), ("security.istio.io", "AuthorizationPolicy"),
    ("security.istio.io", "RequestAuthentication"), ("", "Service"), ("", "ServiceAccount"),
    ("apps", "Deployment"), ("apps", "StatefulSet"), ("multicluster.x-k8s.io", "ServiceExport"),
    ("meshfed.io", "Mesh"), ("meshfed.io", "RateLimit"), ("meshfed.io", "WorkloadFault"),
)
"""(group, kind) of everything registered here."""
