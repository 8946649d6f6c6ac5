"""Identity and PKI: shared root, per-cluster CAs, SPIFFE SVIDs, bundles and federation.

The names below are re-exported lazily (PEP 562 ``__getattr__``): ``from trustdomain
import SpiffeId`` imports ``trustdomain._spiffe`` only, not every submodule. Most of them
need cryptography (~9 MB resident once loaded); a sidecar without mTLS never loads it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, tuple[str, ...]] = {
    "_bundle": ("Bundle", "BundleSet"),
    "_ca": ("INTERMEDIATE_VALIDITY", "ROOT_VALIDITY", "CertificateAuthority", "KeyType", "create_intermediate",
            "create_root"),
    "_errors": ("BootstrapError", "BundleError", "CaError", "IssuanceRefused", "SpiffeIdError", "TrustDomainError"),
    "_files": ("DEFAULT_CA_DIR", "CaDirectory", "load_cacerts", "write_svid"),
    "_policy": ("BootstrapAuthority", "BootstrapGrant", "ClusterSigner"),
    "_rotation": ("IntermediateRotation", "RenewalPolicy", "RenewalSchedule", "RootPhase", "RootRotation",
                  "renewal_schedule"),
    "_source": ("SvidRotator",),
    "_spiffe": ("SpiffeId", "TrustDomain"),
    "_svid": ("DEFAULT_SVID_LIFETIME", "MIN_SVID_LIFETIME", "X509Svid", "issue_svid", "make_csr", "requested_id",
              "sign_csr", "with_key"),
    "_tls": ("ALPN_PROTOCOLS", "MtlsContexts", "PeerIdentity", "TlsStats", "build_context"),
    "_verify": ("PeerRefused", "PeerRole", "RefusalReason", "verify_peer", "verify_peer_chain"),
}
"""Submodule -> the names it contributes to the package namespace."""

_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'trustdomain' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"trustdomain.{module}"), name)
    globals()[name] = value  # once: later lookups are plain module attributes
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
