"""Configs: ranges, presets, --help and --print-config, checked in the parser before any work."""

from __future__ import annotations

import pytest
from conftest import fails

from vsa_dist.cli import main as vsa


@pytest.mark.parametrize("flags,expected", [
    (["--lr", "-1"], "lr -1.0 is outside its range (0, inf)"),
    (["--threads", "0"], "threads 0 is outside its range [1, inf)"),
    (["--dropout", "2"], "dropout 2.0 is outside its range [0, 1)"),
    (["--max-failures", "-1"], "max_failures -1 is outside its range [0, 100]"),
    (["--local-pooling", "attention"], "local_pooling=attention scores cosines: set cosine=true"),
])
def test_training_numbers_outside_their_range_stop_before_any_work(flags, expected, capsys, tmp_path):
    # no features needed: the range check comes first, so these fail in the parser, not inside Ray
    assert expected in fails(capsys, "train-align", "--features", str(tmp_path / "none"), *flags)


def test_help_shows_the_chosen_presets_values(capsys):
    with pytest.raises(SystemExit) as exc:
        vsa(["train-align", "--preset", "train_align_modern", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split()).split("options:", 1)[1]  # argparse wraps help lines
    for flag, value in (("--optimizer", "adam"), ("--lr", "0.00043347263652391595"), ("--score-norm", "mean"),
                        ("--epochs", "20"), ("--weight-decay", "0.0"), ("--dropout", "0.006611054211411638"),
                        ("--lr-schedule", "cosine"), ("--word-rnn", "gru"), ("--local-weight", "0.32170366688834073"),
                        ("--hardest-warmup-epochs", "7"), ("--clip-norm", "2.0")):
        section = text.split(f" {flag} ", 1)[1].split(" --", 1)[0]
        assert f"(default: {value})" in section, (flag, section)
    # the choices are listed, and a boolean says that its flag alone is a switch
    assert " --optimizer {sgd,adam,rmsprop} " in text and " --word-rnn {relu,gru} " in text
    assert "the flag alone means true" in text.split(" --cosine ", 1)[1].split(" --", 1)[0]
    with pytest.raises(SystemExit):
        vsa(["train-mrnn", "--preset", "train_mrnn_modern", "--help"])
    text = " ".join(capsys.readouterr().out.split()).split("options:", 1)[1]
    assert "(default: lstm)" in text.split(" --cell {rnn,lstm}", 1)[1].split(" --", 1)[0]
    assert "(default: adam)" in text.split(" --optimizer {sgd,adam,rmsprop}", 1)[1].split(" --", 1)[0]


@pytest.mark.parametrize("flags,expected", [
    (["--cosine"], True), (["--cosine", "--epochs", "3"], True), (["--cosine", "false"], False),
    (["--cosine", "true"], True), (["--epochs", "3"], False)])
def test_a_boolean_flag_alone_is_a_switch(flags, expected, capsys):
    import yaml

    with pytest.raises(SystemExit):
        vsa(["train-align", "--print-config", *flags])
    assert yaml.safe_load(capsys.readouterr().out)["cosine"] is expected


def test_a_choice_outside_its_list_stops_before_any_work(capsys, tmp_path):
    assert "optimizer 'adamw' is not one of ('sgd', 'adam', 'rmsprop')" in fails(
        capsys, "train-align", "--features", str(tmp_path / "none"), "--optimizer", "adamw")


def test_print_config_needs_no_inputs(capsys):
    import yaml

    with pytest.raises(SystemExit) as exc:
        vsa(["train-align", "--preset", "train_align_modern", "--print-config"])
    assert exc.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optimizer"] == "adam" and printed["features"] == "" and printed["batch_size"] == 128
    with pytest.raises(SystemExit) as exc:  # the paper's settings are the dataclass itself
        vsa(["train-align", "--print-config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["optimizer"], printed["dropout"], printed["lr_schedule"]) == ("sgd", 0.1, "cosine")


@pytest.mark.parametrize("argv", [["caption", "x.jpg"], ["eval", "retrieval"], ["report", "run"], ["features"]])
def test_a_preset_that_does_not_exist_is_an_error(argv, capsys):
    line = fails(capsys, *argv, "--preset", "nope")
    assert "preset 'nope': no such preset in vsa_dist/presets/" in line


def test_every_preset_only_names_keys_of_its_stage_and_resolves():
    from vsa_dist import config
    from vsa_dist.configs import PipelineConfig
    from vsa_dist.recipes.config import AlignConfig, MRNNConfig

    stages = {"train_align": AlignConfig, "train_mrnn": MRNNConfig, "pipeline": PipelineConfig}
    for name in config.presets():
        cls = next(cls for prefix, cls in stages.items() if name.startswith(prefix))
        cfg = config.resolve(cls, name, {}, validate=False)  # unknown keys or bad values raise
        for key in ("align_preset", "mrnn_preset"):  # a pipeline preset names stage presets that exist
            assert not hasattr(cfg, key) or config.preset_exists(getattr(cfg, key)), (name, key)


def test_help_offers_only_the_presets_of_its_own_command(capsys):
    """`vsa caption --help` listed the training presets, which a caption run cannot take."""
    def preset_help(*command: str) -> str:
        with pytest.raises(SystemExit):
            vsa([*command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        return text.rsplit("--preset PRESET", 1)[1].split("--print-config", 1)[0]

    assert "train_" not in preset_help("caption") and "no packaged preset" in preset_help("caption")
    mrnn = preset_help("train-mrnn")
    assert "train_mrnn_quick" in mrnn and "train_align" not in mrnn and "pipeline_" not in mrnn
    assert "pipeline_quick" in preset_help("pipeline") and "train_mrnn" not in preset_help("pipeline")


def test_input_paths_reach_the_workers_absolute(tmp_path, monkeypatch):
    """Ray Train's workers run in a folder of their own: a relative --init (or --features, --snippets) would not be
    found there (a self-critical run from `--init runs/.../best.pt` failed so); storage URIs stay as given."""
    from vsa_dist import config
    from vsa_dist.recipes.config import MRNNConfig

    monkeypatch.chdir(tmp_path)
    local = config.resolve(MRNNConfig, None, {"features": "f", "init": "m/best.pt", "snippets": "s"})
    assert (local.features, local.init, local.snippets) == tuple(str(tmp_path / p) for p in ("f", "m/best.pt", "s"))
    remote = config.resolve(MRNNConfig, None, {"features": "s3://b/f", "init": "s3://b/best.pt"})
    assert (remote.features, remote.init) == ("s3://b/f", "s3://b/best.pt")


def test_one_orientation_everywhere(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    from vsa_dist.data.images import check_jpeg, open_rgb
    from vsa_dist.features.extract import decode_rgb

    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned by 90 degrees
    pixels = np.random.default_rng(0).integers(0, 255, (120, 224, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", exif=exif)
    data = buffer.getvalue()
    assert Image.open(io.BytesIO(data)).size == (224, 120)      # as stored
    assert check_jpeg(data) == (120, 224)                         # the shard's width and height: as shown
    assert decode_rgb(data).shape[:2] == (224, 120)               # what the CNN sees and boxes refer to
    assert open_rgb(data).size == (120, 224)                      # what the report and the grids draw on


def test_the_pixel_limit_is_read_from_the_header_and_can_be_raised_above_pils():
    import io

    from PIL import Image

    from vsa_dist.data.images import DEFAULT_MAX_PIXELS, ImageRejected, check_image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")  # start of frame: claim 20000 x 20000 (4.5x PIL's own limit)
    data[sof + 5:sof + 9] = (20000).to_bytes(2, "big") * 2
    with pytest.raises(ImageRejected, match="400000000 pixels > limit"):
        check_image(bytes(data))
    assert check_image(bytes(data), max_pixels=10 * DEFAULT_MAX_PIXELS) == (20000, 20000)


def test_the_command_list_describes_every_command_and_the_version_is_the_installed_one(capsys):
    from importlib import metadata

    from vsa_dist.cli import COMMANDS, DESCRIPTIONS

    with pytest.raises(SystemExit) as done:
        vsa(["--help"])
    assert done.value.code == 0
    listing = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name:<16}{DESCRIPTIONS[name]}" in listing
    # every subcommand of a group too ("": the group's own command, listed as what it takes)
    groups = [(f"{name} {sub or '[NAME…]'}", sub) for name, table in COMMANDS.items() if isinstance(table, dict)
              for sub in table]
    assert all(key in DESCRIPTIONS for key, _ in groups), groups
    with pytest.raises(SystemExit):
        vsa(["--version"])
    assert capsys.readouterr().out.strip() == f"vsa-dist {metadata.version('vsa-dist')}"


def test_a_preset_may_name_a_base_preset_and_says_only_what_it_changes(tmp_path):
    import pytest

    from vsa_dist import config
    from vsa_dist.recipes.config import AlignConfig

    quick = config.resolve(AlignConfig, "train_align_quick", {}, validate=False)
    modern = config.resolve(AlignConfig, "train_align_modern", {}, validate=False)
    assert (quick.epochs, quick.hardest_warmup_epochs) == (10, 5)
    assert (quick.optimizer, quick.lr, quick.word_rnn, quick.margin) == \
           (modern.optimizer, modern.lr, modern.word_rnn, modern.margin)
    assert config.resolve(AlignConfig, "train_align_quick", {"epochs": 3}, validate=False).epochs == 3
    loop_a, loop_b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    loop_a.write_text(f"preset: {loop_b}\nepochs: 2\n")
    loop_b.write_text(f"preset: {loop_a}\n")
    with pytest.raises(config.ConfigError, match="its bases name it again"):
        config.resolve(AlignConfig, str(loop_a), {}, validate=False)
