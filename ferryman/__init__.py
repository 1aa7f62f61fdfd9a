"""Ferryman: reverse proxy, load balancer, forward proxy and API gateway."""

__version__ = "0.1.0"
