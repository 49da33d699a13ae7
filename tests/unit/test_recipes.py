"""Each training recipe: its model built from its config, every model setting declared once (models/args.py), and the
train stream that ``vsa tune`` reads the same as the stage's own. No data set, no Ray."""

from __future__ import annotations

import dataclasses

import pytest

from vsa_dist import config as cfglib
from vsa_dist.models.alignment import AlignmentModel
from vsa_dist.models.args import AlignmentArgs, AlignmentSettings, MRNNArgs, MRNNSettings
from vsa_dist.models.mrnn import MRNN
from vsa_dist.recipes import align, mrnn
from vsa_dist.recipes.config import TuneConfig
from vsa_dist.stages.tune import fixed_values, search_space
from vsa_dist.training.config import TrainConfig

RECIPES = [(align.AlignTask, align.model_args, AlignmentSettings, AlignmentArgs, AlignmentModel),
           (mrnn.MRNNTask, mrnn.model_args, MRNNSettings, MRNNArgs, MRNN)]
# what the feature folder (or the model itself) sets: the CNN the model carries is the trunk folder's
DATA_DECIDES = {"vocab_size", "feature_dim", "l2_features", "encoder", "trunk_block"}


@pytest.mark.parametrize("task,model_args,settings,args,model_class", RECIPES)
def test_every_model_setting_is_declared_once_and_reaches_the_model(task, model_args, settings, args, model_class):
    config_fields = {f.name: f for f in dataclasses.fields(task.config)}
    for field in dataclasses.fields(settings):
        # the config's field is the settings' own (inherited), not a copy that could drift
        assert config_fields[field.name] is settings.__dataclass_fields__[field.name], field.name
        assert field.name not in TrainConfig.__dataclass_fields__, f"{field.name}: declared for training too"
    assert {f.name for f in dataclasses.fields(args)} - set(settings.__dataclass_fields__) <= DATA_DECIDES
    cfg = cfglib.resolve(task.config, task.config.PRESET, {"features": "/f"})
    built = model_class(model_args(cfg, 20, 8)).args
    for name in settings.__dataclass_fields__:
        assert getattr(built, name) == getattr(cfg, name), name


@pytest.mark.parametrize("task,model_args,settings,args,model_class", RECIPES)
def test_a_default_changed_in_its_one_place_changes_the_model(task, model_args, settings, args, model_class,
                                                               monkeypatch):
    name, new = ("margin", 0.37) if task is align.AlignTask else ("hidden", 48)
    monkeypatch.setattr(settings.__dataclass_fields__[name], "default", new)
    cfg = cfglib.resolve(task.config, None, {"features": "/f"})
    assert getattr(cfg, name) == new
    assert getattr(model_class(model_args(cfg, 20, 8)).args, name) == new


def test_the_two_dropouts_that_disagreed_are_one():
    """The alignment config said 0.1 and its model args 0.5; whoever built the model decided which one it got."""
    cfg = cfglib.resolve(align.AlignTask.config, None, {"features": "/f"})
    assert cfg.dropout == AlignmentArgs(vocab_size=5).dropout == align.model_args(cfg, 3, 8).dropout == 0.1


def tune_config(**values) -> TuneConfig:
    return cfglib.resolve(TuneConfig, None, {"features": "/f", **values})


def trial_stream(tune: TuneConfig):
    task = {"align": align.AlignTask, "mrnn": mrnn.MRNNTask}[tune.stage]
    return task.stream(cfglib.resolve(task.config, None, fixed_values(tune)))


def test_tune_streams_what_the_stage_would():
    # a model that scores the whole image alone is streamed its row alone, and its mirrored images join
    whole = tune_config(set=["regions=false", "augment=/mirrored"])
    stream = trial_stream(whole)
    assert stream.whole_image_only and stream.augment == ("/mirrored",)
    stage = cfglib.resolve(align.AlignConfig, None, {"features": "/f", "regions": False, "augment": ["/mirrored"]})
    assert stream == align.AlignTask.stream(stage)
    assert not trial_stream(tune_config(base="train_align_modern")).whole_image_only  # its score reads the regions
    attending = tune_config(stage="mrnn", base="train_mrnn_attention")
    assert not trial_stream(attending).whole_image_only and trial_stream(tune_config(stage="mrnn")).whole_image_only


def test_tune_without_a_base_tunes_what_the_stage_trains():
    fixed = fixed_values(tune_config(stage="mrnn"))
    stage = cfglib.layered(mrnn.MRNNConfig, mrnn.MRNNConfig.PRESET, {})
    assert {k: fixed[k] for k in ("optimizer", "dropout", "epochs", "cell", "lr")} | {"epochs": stage["epochs"]} == \
        {k: stage[k] for k in ("optimizer", "dropout", "epochs", "cell", "lr")}
    assert fixed["optimizer"] == "adam"  # once rmsprop here and adam in the stage's preset


def test_a_space_that_would_change_the_stream_is_refused_for_every_key_that_does(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("attention: {choice: [true, false]}\n")
    with pytest.raises(cfglib.ConfigError, match="decides the train stream"):
        search_space(tune_config(stage="mrnn", base="train_mrnn_modern", space=str(space)))
    space.write_text("hidden: {randint: [64, 128]}\n")  # the model's shape: the stream stays
    assert "hidden" in search_space(tune_config(stage="mrnn", space=str(space)))
