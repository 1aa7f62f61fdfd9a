"""Built-in filters, one feature per module, written against :mod:`ferryman.filters.base`."""

from ferryman.filters.base import Filter, FilterChain

__all__ = ["Filter", "FilterChain"]
