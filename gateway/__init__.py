"""The data plane: one proxy engine in three roles (sidecar, east-west and ingress gateway)."""


class GatewayError(Exception):
    """Base of every error raised by ``gateway``."""


__all__ = ["GatewayError"]
