"""MLflow pyfunc wrappers: what ``models:/NAME@alias`` loads. Used by the stage runners (driver side)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch


class AlignmentScorer(mlflow.pyfunc.PythonModel):
    """Scores image-sentence pairs: a DataFrame with ``sentence`` (text) and ``features`` ([1+R, D] region
    features from ``vsa features`` with the settings recorded in the model) → ``score`` S_kl per row."""

    def load_context(self, context) -> None:
        from vsa_dist.data.pairs import word_index
        from vsa_dist.stages.train_align import load_model

        self.model, state = load_model(context.artifacts["checkpoint"])
        self.index, self.max_words = word_index(state["vocab"]), state["config"]["max_words"]

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        from vsa_dist.data.pairs import encode_tokens
        from vsa_dist.data.text import tokenize
        from vsa_dist.models.alignment import UNK

        scores = []
        with torch.no_grad():
            for sentence, features in zip(model_input["sentence"], model_input["features"]):
                ids = encode_tokens(tokenize(sentence), self.index, self.max_words) or [UNK]  # no word at all: score it as one unknown word
                regions = self.model.embed_regions(torch.as_tensor(np.asarray(features, dtype=np.float32))[None])
                words, mask = self.model.embed_words(torch.tensor([ids]))
                scores.append(float(self.model.score(regions, words, mask)[0, 0]))
        return {"score": scores}


def log_alignment_model(checkpoint: Path, name: str, feature_settings: dict[str, Any]) -> str:
    """Log the checkpoint as a pyfunc model in the active run and register it; returns the version."""
    info = mlflow.pyfunc.log_model(name="model", python_model=AlignmentScorer(),
                                   artifacts={"checkpoint": str(checkpoint)}, registered_model_name=name,
                                   metadata={"feature_settings": feature_settings})
    return str(info.registered_model_version)
