"""HTTP protocol code with no sockets.

Theory of operation: a parser is fed bytes and calls methods on a *sink* (the connection that
owns the socket); serializers turn heads and body chunks into bytes. Nothing here awaits,
so every framing rule can be tested by feeding bytes and looking at the calls.
"""
