"""Identity and PKI: shared root, per-cluster CAs, SPIFFE SVIDs, bundles and federation."""


class TrustDomainError(Exception):
    """Base of every error raised by ``trustdomain``."""


__all__ = ["TrustDomainError"]
