"""The forward proxy: Ferryman between an office's clients and the outside (Squid's job).

Entry points, each checked the same way before anything is connected:

- ``http.py``: on an HTTP listener, absolute-form requests (``GET http://host/``) go to the
  reverse proxy's streaming exchange with a per-destination pool; ``CONNECT host:port``
  becomes a byte tunnel.
- ``socks_server.py``: SOCKS5 (and SOCKS4a) on its own port, speaking through the sans-IO
  machines of ``socks5.py``.

The checks, in order: the client's network, proxy credentials (``auth.py``: Basic / RFC 1929
against bcrypt and SHA-crypt hashes), the ordered access rules (``acl.py``), then the
destination's addresses against the address policy, on the addresses actually connected to
(``outbound.py`` with ``resolver.py``). ``chain.py`` sends chosen destinations through a
parent proxy instead; ``pac.py`` writes the PAC file; ``log.py`` the access log line of
every request and tunnel. ``service.py`` builds it all from the ``forward:`` config.
"""
