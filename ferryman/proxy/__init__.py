"""Handlers that answer requests: proxying to upstreams (with WebSocket tunnels), and the
simple ones (respond, redirect).

A handler's :meth:`start` gets the request context and the :class:`Downstream` (the client
side, whichever protocol it speaks) and returns an :class:`Exchange` that receives the
request body, or None when it answered at once.
"""
