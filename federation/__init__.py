"""Control planes, federation between clusters, failover drills and ``fedctl``."""

from ._errors import FederationError

__all__ = ["FederationError"]
