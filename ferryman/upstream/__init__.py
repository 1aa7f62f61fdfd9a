"""Upstream groups: peers and their health, balancers, keep-alive pools, retries.

Balancers and peer health are plain objects fed the clock; only the pool owns sockets.
"""
