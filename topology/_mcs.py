"""multicluster.x-k8s.io ServiceExport (the Kubernetes Multi-Cluster Services API, KEP-1645).

A ServiceExport named like a Service, in the Service's namespace, marks that service as
visible to the other clusters of the ClusterSet: it becomes reachable as
``<svc>.<ns>.svc.clusterset.local`` and, in meshfed, through the east-west gateways.
The object carries nothing but its name and namespace; its spec is empty.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServiceExportSpec:
    """Empty by design: the export is identified by ``metadata.name``/``namespace``.

    An absent spec and ``spec: {}`` are both accepted; any field inside is an error.
    """
