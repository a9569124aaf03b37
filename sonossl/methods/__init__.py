"""SSL methods, looked up by name in one explicit dict (STYLE.md, item 5)."""

from __future__ import annotations

from sonossl.errors import SonosslError
from sonossl.methods.barlowtwins import BarlowTwins
from sonossl.methods.base import SSLMethod

METHODS: dict[str, type[SSLMethod]] = {
    "barlowtwins": BarlowTwins,
}


def get_method(name: str) -> type[SSLMethod]:
    """The method class registered under ``name``; a :class:`SonosslError` lists the valid ones."""
    if name not in METHODS:
        raise SonosslError(f"method: unknown method {name!r}; expected one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]


__all__ = ["METHODS", "get_method", "SSLMethod"]
