"""Certificates and keys: checks at load, and a local CA for development (``ferryman cert``)."""

from __future__ import annotations


class TlsError(Exception):
    """A certificate or key that cannot be used; ``str()`` names the file and the problem."""
