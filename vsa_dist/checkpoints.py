"""Reading a checkpoint of ours: tensors and plain data only, never pickled code (``torch.load(weights_only=True)``),
and the models in it. Stages, evaluation, the report and serving all load models here."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import torch

from vsa_dist.errors import ConfigError
from vsa_dist.models.alignment import AlignmentArgs, AlignmentModel
from vsa_dist.models.mrnn import MRNN, MRNNArgs


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


def _args(cls, state: dict[str, Any], vocab_size: int, old_defaults: dict[str, Any] | None = None):
    """A model's args: as the checkpoint stores them (``asdict(model.args)``), or for checkpoints written before it
    did, the same fields read from the saved stage config (every key the stage had; later ones at their defaults)."""
    if "model_args" in state:
        return cls(**state["model_args"])
    fields = {f.name for f in dataclasses.fields(cls)} - {"vocab_size", "feature_dim"}
    saved = {**(old_defaults or {}), **state["config"]}
    return cls(vocab_size=vocab_size, feature_dim=state["feature_dim"], **{k: saved[k] for k in fields if k in saved})


# what each loader expects a checkpoint to hold, as a person names it
KINDS = {"alignment": "an alignment model (vsa train-align)", "generator": "a caption generator (vsa train-mrnn)"}


def checkpoint_kind(state: dict[str, Any]) -> str:
    """Which of our models a checkpoint holds: only the generator has a ``cell``, in its model args (or, in
    checkpoints that predate them, its saved config)."""
    return "generator" if "cell" in (state.get("model_args") or state.get("config") or {}) else "alignment"


def _require_kind(path: Path | str, state: dict[str, Any], wanted: str) -> None:
    if (found := checkpoint_kind(state)) != wanted:
        raise CheckpointError(f"{path}: the checkpoint of {KINDS[found]}, not of {KINDS[wanted]}")


def load_alignment(path: Path | str) -> tuple[AlignmentModel, dict[str, Any]]:
    """The best-on-dev alignment model of a checkpoint (weights only) and its metadata."""
    state = read_checkpoint(path)
    _require_kind(path, state, "alignment")
    model = AlignmentModel(_args(AlignmentArgs, state, len(state["vocab"]) + 2))  # + PAD, UNK
    state["best"].setdefault("score", state["best"].pop("rsum", None))  # older checkpoints name it rsum
    model.load_state_dict(state["best"]["state"] or state["model"])
    return model.eval(), state


def trained_cnn(path: Path | str) -> tuple[str, dict[str, torch.Tensor]]:
    """The CNN an alignment checkpoint trained (``train-align --encoder cached`` or ``full``): its backbone's name and
    the whole network's weights, for ``vsa features --cnn-from``. CheckpointError if it carries none."""
    model, _ = load_alignment(path)
    if model.encoder is None:
        raise CheckpointError(f"{path}: the alignment model read a frozen CNN's vectors: it carries no trained CNN "
                              "(train-align --encoder cached or full trains one)")
    return model.encoder.backbone, model.encoder.net.state_dict()


def load_generator(path: Path | str) -> tuple[MRNN, dict[str, Any]]:
    """The best-on-dev generator of a checkpoint (weights only) and its metadata."""
    state = read_checkpoint(path)
    _require_kind(path, state, "generator")
    # + PAD, UNK, END; checkpoints from before feature_norm used unit length
    model = MRNN(_args(MRNNArgs, state, len(state["vocab"]) + 3, old_defaults={"feature_norm": "unit"}))
    model.load_state_dict(state["best"]["state"] or state["model"])
    return model.eval(), state


def generator_decoding(state: dict[str, Any], beam: int = 0,
                       length_penalty: float | None = None) -> tuple[int, int, float]:
    """``generate``'s beam, max_len and length penalty for a generator's checkpoint: the beam and penalty asked for,
    else its own (the beam its training chose on dev, or 1; the penalty it was trained with). One rule for ``vsa eval``
    and ``vsa report``."""
    own_penalty = state["config"].get("length_penalty", 0.0)
    return (beam or state.get("beam") or 1, state["config"]["max_len"],
            own_penalty if length_penalty is None else length_penalty)
