"""Errors of the federation package (control planes, links, the CLI)."""


class FederationError(Exception):
    """Base of every error raised by ``federation``; the CLI prints it without a traceback."""
