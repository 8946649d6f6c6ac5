"""Identity and PKI: shared root, per-cluster CAs, SPIFFE SVIDs, bundles and federation."""

from ._bundle import Bundle, BundleSet
from ._ca import (
    INTERMEDIATE_VALIDITY, ROOT_VALIDITY, CertificateAuthority, KeyType, create_intermediate, create_root,
)
from ._errors import (
    BootstrapError, BundleError, CaError, IssuanceRefused, SpiffeIdError, TrustDomainError,
)
from ._files import DEFAULT_CA_DIR, CaDirectory, load_cacerts, write_svid
from ._policy import BootstrapAuthority, BootstrapGrant, ClusterSigner
from ._rotation import (
    IntermediateRotation, RenewalPolicy, RenewalSchedule, RootPhase, RootRotation, renewal_schedule,
)
from ._source import SvidRotator
from ._spiffe import SpiffeId, TrustDomain
from ._svid import (
    DEFAULT_SVID_LIFETIME, MIN_SVID_LIFETIME, X509Svid, issue_svid, make_csr, requested_id, sign_csr, with_key,
)
from ._tls import ALPN_PROTOCOLS, MtlsContexts, PeerIdentity, TlsStats, build_context
from ._verify import PeerRefused, PeerRole, RefusalReason, verify_peer, verify_peer_chain

__all__ = [
    "ALPN_PROTOCOLS", "BootstrapAuthority", "BootstrapError", "BootstrapGrant", "Bundle", "BundleError",
    "BundleSet", "CaDirectory", "CaError", "CertificateAuthority", "ClusterSigner", "DEFAULT_CA_DIR",
    "DEFAULT_SVID_LIFETIME", "INTERMEDIATE_VALIDITY", "IntermediateRotation", "IssuanceRefused", "KeyType",
    "MIN_SVID_LIFETIME", "MtlsContexts", "PeerIdentity", "PeerRefused", "PeerRole", "ROOT_VALIDITY",
    "RefusalReason", "RenewalPolicy", "RenewalSchedule", "RootPhase", "RootRotation", "SpiffeId",
    "SpiffeIdError", "SvidRotator", "TlsStats", "TrustDomain", "TrustDomainError", "X509Svid", "build_context",
    "create_intermediate", "create_root", "issue_svid", "load_cacerts", "make_csr", "renewal_schedule",
    "requested_id", "sign_csr", "verify_peer", "verify_peer_chain", "with_key", "write_svid",
]
