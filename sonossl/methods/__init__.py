"""SSL methods, looked up by name in one explicit dict (docs/methods.md, "Conventions")."""

from __future__ import annotations

from sonossl.errors import SonosslError
from sonossl.methods.ae import AutoEncoder
from sonossl.methods.barlowtwins import BarlowTwins
from sonossl.methods.base import MethodOptions, SSLMethod
from sonossl.methods.byol import BYOL
from sonossl.methods.dino import DINO
from sonossl.methods.moco import MoCo
from sonossl.methods.simclr import SimCLR
from sonossl.methods.vicreg import VICReg

METHODS: dict[str, type[SSLMethod]] = {
    "ae": AutoEncoder,
    "barlowtwins": BarlowTwins,
    "byol": BYOL,
    "dino": DINO,
    "moco": MoCo,
    "simclr": SimCLR,
    "vicreg": VICReg,
}


def get_method(name: str) -> type[SSLMethod]:
    """The method class registered under ``name``; a :class:`SonosslError` lists the valid ones."""
    if name not in METHODS:
        raise SonosslError(f"method: unknown method {name!r}; expected one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def validate_method(cfg) -> MethodOptions:
    """The one check of a pretraining config's method (:class:`~sonossl.config.PretrainConfig`):
    the method exists, its ``method_options`` parse, and its ``check_config`` accepts ``cfg``.
    Called wherever a pretraining config is built: ``run_pretrain``, the study grid and the
    method's constructor. Returns the parsed options; a problem is one :class:`SonosslError` line."""
    return get_method(cfg.method).validate(cfg)


__all__ = ["METHODS", "get_method", "validate_method", "SSLMethod"]
