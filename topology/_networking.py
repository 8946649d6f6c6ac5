"""Registers the networking.istio.io kinds with the loader.

Istio serves the same schema at v1alpha3, v1beta1 and v1, so one spec class per kind
answers for all three.
"""

from __future__ import annotations

from ._destinationrule import DestinationRule
from ._istio_gateway import Gateway
from ._resource import register_kind
from ._serviceentry import ServiceEntry, WorkloadEntry
from ._sidecar import Sidecar
from ._virtualservice import VirtualService

GROUP = "networking.istio.io"
VERSIONS = frozenset({"v1alpha3", "v1beta1", "v1"})

for _kind, _spec in (("VirtualService", VirtualService), ("DestinationRule", DestinationRule),
                     ("Gateway", Gateway), ("ServiceEntry", ServiceEntry), ("Sidecar", Sidecar),
                     ("WorkloadEntry", WorkloadEntry)):
    register_kind(GROUP, _kind, VERSIONS, _spec, spec_required=True)
