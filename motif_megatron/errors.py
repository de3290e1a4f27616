"""User-facing errors: bad input gets one clear line, never a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """Input the user can fix (missing file, unsupported shape, bad flag); printed as one line."""


def run_cli(main: Callable[[], T]) -> Callable[[], T]:
    """Wrap a tool's ``main`` so a ``UserError`` prints ``error: <message>`` and exits with 2."""

    @functools.wraps(main)
    def wrapper() -> T:
        try:
            return main()
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return wrapper


def quiet_library_warnings() -> None:
    """Megatron-Core and torch warn at import about optional GPU extras; tools do not repeat them."""
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
