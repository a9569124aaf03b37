"""Command-line flags generated from the typed configs: one declaration per setting.

A setting is declared once, as a field of a pydantic config (:mod:`sonossl.config`) with its
type, default, bounds and a ``description`` that names its unit. :func:`add_config_flags` turns
each field into a flag (``batch_size`` -> ``--batch-size``) whose help line is that description
with the default; :func:`flag_values` reads the parsed flags back as a layer of values for
:func:`~sonossl.config.build_config`. A flag not given is ``None``, so it never hides a value
from a preset or a ``--config`` file. Fields of a nested type (``method_options``, ``augment``)
are set in a ``--config`` file only.

Types: ``int``/``float``/``str``/``Path`` as themselves, a ``Literal`` as choices, a list or
tuple of numbers or choices as comma-separated values (``--fractions 1,10,100``), a grid of
values per key as ``KEY=V,V;KEY=V,V`` (``--select-on-valid "lr=1e-3,3e-4;lp_ft=false,true"``),
``bool`` as a switch (``--x`` when the default is off, ``--no-x`` when it is on). A field whose
values are a registry's names (``--method``, ``--backbone``) takes them as choices from that
registry (:class:`Names`), read only when a help screen or a given value needs them.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def _split(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in _split(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in _split(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _grid(text: str) -> dict[str, list[str]]:
    """``lr=1e-3,3e-4;lp_ft=false,true`` -> ``{"lr": ["1e-3", "3e-4"], "lp_ft": ["false", "true"]}``
    (the config's field validator turns each value into its field's type)."""
    grid = {}
    for part in (p.strip() for p in text.split(";") if p.strip()):
        key, sep, values = part.partition("=")
        if not sep or not key.strip() or not _split(values):
            raise argparse.ArgumentTypeError(f"expected KEY=V,V;KEY=V,V, got {text!r}")
        grid[key.strip()] = _split(values)
    return grid


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(annotation, False)``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _converter(annotation: Any) -> dict[str, Any] | None:
    """argparse keywords (``type``, ``choices``, ``metavar``) for a field's type; ``None`` for a
    type set only in a config file (a mapping or a nested model)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return {"choices": [str(v) for v in typing.get_args(annotation)]}
    if origin in (list, tuple):
        inner = typing.get_args(annotation)[0]
        if inner is int:
            return {"type": _ints, "metavar": "N,N,..."}
        if inner is float:
            return {"type": _floats, "metavar": "X,X,..."}
        if typing.get_origin(inner) is Literal:
            return {"type": _split, "metavar": ",".join(map(str, typing.get_args(inner)))}
        return {"type": _split, "metavar": "A,B,..."} if inner is str else None
    if origin is dict and typing.get_origin(typing.get_args(annotation)[1]) is list:
        return {"type": _grid, "metavar": "KEY=V,V;KEY=V,V"}
    if annotation in (int, float, str):
        return {"type": annotation, "metavar": {int: "N", float: "X", str: "TEXT"}[annotation]}
    if annotation is Path:
        return {"type": Path, "metavar": "PATH"}
    return None


def _default_text(info) -> str:
    if info.default is PydanticUndefined and info.default_factory is None:
        return "required"
    value = info.default_factory() if info.default_factory is not None else info.default
    if value is None or (isinstance(value, (list, tuple, dict)) and not value):
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


class Names:
    """argparse choices read from a registry on first use: a help screen, or a value given on the
    command line (the registries import torch, which a command need not load to start). An
    unknown name is then the usual one-line usage error listing them."""

    def __init__(self, load: Callable[[], Iterable[str]]):
        self._load, self._names = load, None

    def _get(self) -> tuple[str, ...]:
        if self._names is None:
            self._names = tuple(self._load())
        return self._names

    def __contains__(self, value: object) -> bool:
        return value in self._get()

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, cls: type[BaseModel], *, positional: tuple[str, ...] = (),
                     skip: tuple[str, ...] = (), names: dict[str, Names] | None = None) -> list[str]:
    """A flag (or, for ``positional`` names, an argument) per field of ``cls``; returns the
    field names added. Help: the field's description, the choices of a field in ``names``, then
    its default."""
    added = []
    for name, info in cls.model_fields.items():
        if name in skip:
            continue
        annotation, optional = _unwrap(info.annotation)
        help_text = (info.description or "").replace("%", "%%")
        if names and name in names:  # expanded by argparse when the help is shown
            help_text += ": %(choices)s"
        help_text = f"{help_text} (default: {_default_text(info)})".strip()
        if annotation is bool:
            on = not info.default
            parser.add_argument(flag_name(name) if on else "--no-" + name.replace("_", "-"), dest=name,
                                action="store_true" if on else "store_false", default=None, help=help_text)
        elif name in positional:
            many = typing.get_origin(annotation) in (list, tuple)
            parser.add_argument(name, type=typing.get_args(annotation)[0] if many else annotation,
                                nargs="+" if many else ("?" if optional else None), help=help_text)
        else:
            kwargs = _converter(annotation)
            if kwargs is None:  # a mapping or a nested model: set in a config file
                continue
            if names and name in names:
                kwargs.update(choices=names[name], metavar="NAME")
            parser.add_argument(flag_name(name), dest=name, default=None, help=help_text, required=info.is_required(),
                                **kwargs)
        added.append(name)
    return added


def flag_values(ns: argparse.Namespace, cls: type[BaseModel]) -> dict[str, Any]:
    """The values of ``cls``'s fields given on the command line (``None``: not given)."""
    return {name: getattr(ns, name) for name in cls.model_fields if getattr(ns, name, None) is not None}


@dataclass(frozen=True)
class Command:
    """One sub-command: its name, one-line help, the config whose fields are its flags, the
    handler ``(args) -> exit status``, and the invocation flags it takes besides its settings
    (``config``: ``--config FILE``; ``output``: ``--resume``/``--overwrite``, or ``--overwrite``
    alone when it cannot resume; ``quiet``: ``--quiet``); ``names``: the fields whose values are
    a registry's names."""

    name: str
    help: str
    config: type[BaseModel]
    handler: Callable[[argparse.Namespace], int]
    positional: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    config_file: bool = False
    output: Literal["resume", "overwrite", "none"] = "resume"
    quiet: bool = False
    extra: Callable[[argparse.ArgumentParser], None] | None = field(default=None)
    names: dict[str, Names] = field(default_factory=dict)  # fields whose values are a registry's names


def register(sub, command: Command) -> argparse.ArgumentParser:
    """Add ``command`` to the sub-parsers ``sub``: its config's flags and its invocation flags."""
    p = sub.add_parser(command.name, help=command.help, description=command.help)
    if command.config_file:
        p.add_argument("--config", type=Path, metavar="FILE",
                       help="YAML or JSON file of settings, any key of this command (flags override it; default: none)")
    if command.extra is not None:
        command.extra(p)
    add_config_flags(p, command.config, positional=command.positional, skip=command.skip, names=command.names)
    if command.output == "resume":
        g = p.add_mutually_exclusive_group()
        g.add_argument("--resume", action="store_true", help="continue an existing output, skipping what is done")
        g.add_argument("--overwrite", action="store_true", help="replace an existing output")
    elif command.output == "overwrite":
        p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    if command.quiet:
        p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=command.handler, command_spec=command)
    return p
