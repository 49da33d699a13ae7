"""``vsa tune``'s search space: every key and every end of its range checked against the stage's own config before a
trial starts; draws seeded, inside the space."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import fails

from vsa_dist import config as cfglib
from vsa_dist.recipes.config import AlignConfig, TuneConfig
from vsa_dist.stages.tune import sample_trials, search_space


def space_config(tmp_path, text: str, **values) -> TuneConfig:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return cfglib.resolve(TuneConfig, None, {"features": str(tmp_path / "features"), "space": str(path), **values})


@pytest.mark.parametrize("text,expected", [
    ("lr: {loguniform: [0, 1.0e-3]}", "loguniform needs low > 0"),
    ("dropout: {uniform: [0.0, 1.5]}", "dropout 1.5 is outside its range [0, 1)"),
    ("optimizer: {choice: [adam, lion]}", "optimizer 'lion' is not one of"),
    ("lr_rate: {uniform: [1, 2]}", "not a config key of align"),
    ("epochs: {randint: [1, 9]}", "set by vsa tune itself"),
    ("max_words: {randint: [10, 20]}", "decides the train stream"),
    ("regions: {choice: [true, false]}", "decides the train stream"),  # the whole image's row alone, or every row
    ('lr: {loguniform: ["a", "b"]}', "loguniform needs numbers"),
    ("lr: {gaussian: [1, 2]}", "expected one of"),
    ("lr: {uniform: [2.0e-3, 1.0e-3]}", "is not below high"),
])
def test_a_bad_space_fails_before_any_trial(tmp_path, text, expected):
    with pytest.raises(cfglib.ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        search_space(space_config(tmp_path, text))


def test_a_bad_space_is_one_line_from_the_command(tmp_path, capsys):
    (tmp_path / "space.yaml").write_text("momentum: {uniform: [0.5, 1.0]}\n")
    line = fails(capsys, "tune", "--features", str(tmp_path), "--space", str(tmp_path / "space.yaml"))
    assert "momentum 1.0 is outside its range [0, 1)" in line


def test_draws_are_seeded_and_inside_the_space(tmp_path):
    cfg = space_config(tmp_path, "lr: {loguniform: [1.0e-5, 1.0e-2]}\nhidden: {randint: [64, 128]}\n"
                                 "cell: {choice: [rnn, lstm]}\n", stage="mrnn")
    space = search_space(cfg)
    draws = sample_trials(space, 200, seed=3)
    assert draws == sample_trials(space, 200, seed=3) and draws != sample_trials(space, 200, seed=4)
    assert all(1e-5 <= d["lr"] <= 1e-2 and 64 <= d["hidden"] < 128 and d["cell"] in ("rnn", "lstm") for d in draws)
    assert {d["cell"] for d in draws} == {"rnn", "lstm"} and isinstance(draws[0]["hidden"], int)
    # log-uniform: about as many draws in each decade
    decades = [sum(10 ** -k <= d["lr"] < 10 ** -(k - 1) for d in draws) for k in (5, 4, 3)]
    assert min(decades) > 40, decades


def test_the_default_space_is_lr_and_weight_decay_around_the_base(tmp_path):
    cfg = cfglib.resolve(TuneConfig, None, {"features": str(tmp_path / "f"), "base": "train_align_modern"})
    space = search_space(cfg)
    base = cfglib.resolve(AlignConfig, "train_align_modern", {}, validate=False).lr  # ten times either side of it
    assert space["lr"][0] == "loguniform" and space["lr"][1] == pytest.approx([base / 10, base * 10])
    assert space == {"lr": space["lr"], "weight_decay": ("loguniform", [1e-6, 1e-2])}


def test_configs_are_frozen_once_resolved(tmp_path):
    cfg = cfglib.resolve(TuneConfig, None, {"features": str(tmp_path / "f")})
    assert cfg.out == str(tmp_path / "tune-align")  # a derived default, filled by validate
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.trials = 3
    assert dataclasses.replace(cfg, trials=3).trials == 3
