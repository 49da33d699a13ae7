"""Reading a checkpoint of ours: tensors and plain data only, never pickled code (``torch.load(weights_only=True)``)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from vsa_dist.config import ConfigError


class CheckpointError(ConfigError):
    """A file that is not a vsa checkpoint, or one that holds more than weights and plain data: refused."""


def read_checkpoint(path: Path | str, keys: tuple[str, ...] = ("model", "config", "vocab")) -> dict[str, Any]:
    """A checkpoint's contents; CheckpointError (one line: the file and why) for anything else. A checkpoint that
    holds Python objects beyond tensors and plain data is refused by ``weights_only`` before any of it runs."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):  # torch met a Python object it will not import (a class, a function)
            raise CheckpointError(f"{path}: refused: it holds Python objects, not only weights and plain data "
                                  "(vsa never unpickles code)") from err
        raise CheckpointError(f"{path}: not a torch checkpoint ({(str(err).splitlines() or [''])[0][:160]})") from err
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        raise CheckpointError(f"{path}: not a torch checkpoint ({type(err).__name__}: "
                              f"{(str(err).splitlines() or [''])[0][:160]})") from err
    if not isinstance(state, dict) or (missing := [k for k in keys if k not in state]):
        raise CheckpointError(f"{path}: not a vsa checkpoint (it lacks {missing if isinstance(state, dict) else keys})")
    return state
