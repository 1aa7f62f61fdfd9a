"""The only package that owns sockets: listeners, client connections, workers, signals."""
