"""A config field's declaration: its default, its ``--help`` text, its range or choices. The standard library only, so
that the model's own settings (``models/args.py``) and every command's config declare their fields the same way."""

from __future__ import annotations

import dataclasses
from typing import Any


def interval(text: str) -> tuple[float, float, bool, bool]:
    """'[0, 1)' → (0, 1, lower closed, upper closed); 'inf' stands for no bound."""
    low, high = (float(part) for part in text[1:-1].split(","))
    return low, high, text[0] == "[", text[-1] == "]"


def option(default: Any, help: str = "", *, range: str | None = None, choices: tuple[str, ...] | None = None,
           positional: bool = False) -> Any:
    """A config field: its default, its ``--help`` text, and optionally its ``range`` in interval notation ('[1, inf)',
    '(0, 1]') or its ``choices`` (both checked before any work, and listed by --help) or that it is the command's
    positional argument. A list default is copied for each config, as dataclasses need."""
    metadata: dict[str, Any] = {"help": help}
    if range is not None:
        interval(range)  # a malformed range fails at import, not at a user's run
        metadata["range"] = range
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if positional:
        metadata["positional"] = True
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)
