"""Command-line flags generated from dataclass fields: the one way every command declares them.

A field made with :func:`option` becomes a flag with Megatron-LM's spelling
(``micro_batch_size`` -> ``--micro-batch-size``), its help text and argparse extras in the field
metadata. The trainer (``training/arguments.py``) and the tools build their parsers from the same
dataclasses, so a flag shared by two commands is declared once.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import field


def option(default, help: str, **kw):
    """A dataclass field that becomes a flag: its default, help text and argparse extras."""
    return field(default=default, metadata={"help": help, **kw})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def base_type(tp):
    """``X`` for ``X | None``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def add_fields(parser, cls: type, only: tuple[str, ...] | None = None) -> None:
    """One flag per :func:`option` field of ``cls`` (or of the fields named in ``only``) on a
    parser or argument group. Absent flags leave no attribute, so the dataclass default holds."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        if not meta.pop("cli", True) or (only and f.name not in only):
            continue
        name = meta.pop("flag", flag(f.name))
        kind = base_type(hints[f.name])
        kwargs = {
            "help": meta.pop("help") + f" (default: {f.default})",
            "default": argparse.SUPPRESS,
        }
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            kwargs.update(nargs=meta.pop("nargs", "+"), type=item if item in (int, float) else str)
        else:
            kwargs["type"] = kind
        kwargs.update(meta)
        parser.add_argument(name, **kwargs)


def values(namespace: argparse.Namespace, cls: type) -> dict:
    """The parsed flags that are fields of ``cls`` (lists as tuples), to build it with."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {
        k: tuple(v) if isinstance(v, list) else v for k, v in vars(namespace).items() if k in names
    }
