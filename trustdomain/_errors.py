"""Errors of the trustdomain package: one small hierarchy, data as attributes.

Every message quotes the bad input (a SPIFFE ID, a file, a trust domain) so that a
refusal read in a log says what was refused and why without a debugger.
"""

from __future__ import annotations


class TrustDomainError(Exception):
    """Base of every error raised by ``trustdomain``."""


class SpiffeIdError(TrustDomainError, ValueError):
    """A string that is not a valid SPIFFE ID or trust domain name (SPIFFE-ID spec)."""

    def __init__(self, value: str, problem: str) -> None:
        self.value = value
        self.problem = problem
        super().__init__(f"invalid SPIFFE ID or trust domain {value!r}: {problem}")


class CaError(TrustDomainError):
    """A CA that cannot be created, loaded or imported; ``path`` names the file when known."""

    def __init__(self, message: str, path: str = "") -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class BundleError(TrustDomainError):
    """A trust bundle that cannot be parsed or does not fit its trust domain."""

    def __init__(self, message: str, trust_domain: str = "") -> None:
        self.trust_domain = trust_domain
        super().__init__(f"bundle for {trust_domain!r}: {message}" if trust_domain else message)


class BootstrapError(TrustDomainError):
    """A bootstrap credential that is malformed, forged or expired."""


class IssuanceRefused(TrustDomainError):
    """A CSR the CA will not sign; ``spiffe_id`` is what was asked for (may be empty)."""

    def __init__(self, message: str, spiffe_id: str = "") -> None:
        self.spiffe_id = spiffe_id
        super().__init__(message)
