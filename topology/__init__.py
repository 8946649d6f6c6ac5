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
