"""The training loop's moving average of the weights (``--ema``): its arithmetic, what the best model keeps, and a
resumed run that goes on averaging where it stopped."""

from __future__ import annotations

import torch

from vsa_dist.models.mrnn import MRNN, MRNNArgs
from vsa_dist.recipes.config import MRNNConfig
from vsa_dist.training.session import RunSpec
from vsa_dist.training.state import end_epoch, moving_average, restore

SPEC = RunSpec(cfg=MRNNConfig(ema=0.9), vocab=[], feature_dim=6, feature_settings={}, mlflow_run_id="run",
               tracking_uri="")
NO_BEST = {"score": float("-inf"), "epoch": 0, "state": None}


class Metrics:
    """Where rank 0 logs each epoch (an MLflow client in a run)."""

    def __init__(self):
        self.logged = {}

    def log_metric(self, run_id, key, value, step):
        self.logged[key, step] = value


def tiny_model(seed: int) -> MRNN:
    torch.manual_seed(seed)
    return MRNN(MRNNArgs(vocab_size=12, feature_dim=6, hidden=5, word_dim=4, cell="lstm", dropout=0.0))


def weights_after(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """``model`` moved to a new point (a training step's result, without the training)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_no_decay_no_average():
    assert moving_average(tiny_model(0), 0.0) is None


def test_the_average_follows_the_weights_with_its_decay_and_the_best_model_keeps_it(tmp_path):
    # update_parameters runs after each step: the first copies, then avg <- decay * avg + (1 - decay) * weights
    model, decay, steps, expected = tiny_model(0), 0.9, [], None
    averaged = moving_average(model, decay)
    for seed in (1, 2, 3):
        steps.append(weights_after(model, seed))
        averaged.update_parameters(model)
        expected = {k: v.clone() for k, v in steps[0].items()} if expected is None else {
            k: decay * expected[k] + (1 - decay) * steps[-1][k] for k in expected}
    for key, value in averaged.module.state_dict().items():
        torch.testing.assert_close(value, expected[key])
        assert not torch.equal(value, steps[-1][key])  # not the last step's weights

    # rank 0 scores the average: the best model and best.pt keep it; the checkpoint also keeps the trained weights
    best, state = end_epoch(SPEC, Metrics(), {"epoch": 1, "minutes": 0.5}, 0.3, NO_BEST, model,
                            torch.optim.SGD(model.parameters(), lr=0.1), averaged.module)
    for key in expected:
        torch.testing.assert_close(best["state"][key], expected[key])
        torch.testing.assert_close(state["averaged"][key], expected[key])
        torch.testing.assert_close(state["model"][key], steps[-1][key])

    # A resumed run: the trained weights and the average come back, and one more step averages on from there,
    # as it would have without the restart (not a fresh copy of the weights).
    torch.save(state, tmp_path / "checkpoint.pt")
    resumed = tiny_model(7)
    epoch, best_again, minutes, saved = restore(tmp_path / "checkpoint.pt", resumed,
                                                torch.optim.SGD(resumed.parameters(), lr=0.1))
    assert (epoch, best_again["epoch"], minutes) == (2, 1, 0.5)
    averaged_again = moving_average(resumed, decay, saved)
    last = weights_after(resumed, 4)
    averaged_again.update_parameters(resumed)
    model.load_state_dict(last)  # the run without the restart takes the same step
    averaged.update_parameters(model)
    for key, value in averaged_again.module.state_dict().items():
        torch.testing.assert_close(value, decay * expected[key] + (1 - decay) * last[key])
        torch.testing.assert_close(value, averaged.module.state_dict()[key])


def test_a_checkpoint_without_an_average_resumes_into_a_fresh_one(tmp_path):
    model = tiny_model(0)
    _, state = end_epoch(SPEC, Metrics(), {"epoch": 1, "minutes": 0.1}, 0.2, NO_BEST, model,
                         torch.optim.SGD(model.parameters(), lr=0.1))
    assert "averaged" not in state
    torch.save(state, tmp_path / "checkpoint.pt")
    *_, saved = restore(tmp_path / "checkpoint.pt", model, torch.optim.SGD(model.parameters(), lr=0.1))
    averaged = moving_average(model, 0.99, saved)
    now = weights_after(model, 5)
    averaged.update_parameters(model)  # the first update copies the weights
    for key, value in averaged.module.state_dict().items():
        torch.testing.assert_close(value, now[key])
