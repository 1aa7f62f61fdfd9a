"""Ferryman: reverse proxy, load balancer, forward proxy and API gateway."""

from ferryman._compiled import guard

__version__ = "0.1.0"

guard()
