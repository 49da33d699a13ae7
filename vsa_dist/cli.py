"""The ``vsa`` command: one subcommand per stage, each calling the same ``main(argv)`` as jobs/."""

from __future__ import annotations

import importlib
import sys
from importlib import metadata
from typing import NamedTuple

from vsa_dist import config as cfglib
from vsa_dist.configs import (
    CaptionConfig,
    EvalConfig,
    FeaturesConfig,
    ModelsConfig,
    PipelineConfig,
    PromoteConfig,
    RegionEvalConfig,
    ReportConfig,
    SearchConfig,
    ShardsConfig,
    SnippetsConfig,
)
from vsa_dist.recipes.config import AlignConfig, MRNNConfig, TuneConfig


class Command(NamedTuple):
    """A command's runner ("module:function", imported only to run: a stage's module imports torch, Ray and MLflow),
    its config (torch-free: ``--help``, ``--print-config`` and a bad flag are answered from it alone, in a fraction
    of a second; its ``PRESET``, the one the command starts from)."""

    runner: str
    config: type


# name → Command; a nested group is a dict. Only stages that work are listed.
COMMANDS: dict[str, object] = {
    "shards": {"build": Command("vsa_dist.stages.shards:main", ShardsConfig)},
    "features": Command("vsa_dist.stages.features:main", FeaturesConfig),
    "train-align": Command("vsa_dist.stages.train_align:main", AlignConfig),
    "train-mrnn": Command("vsa_dist.stages.train_mrnn:main", MRNNConfig),
    "align-snippets": Command("vsa_dist.stages.align_snippets:main", SnippetsConfig),
    "eval": {
        "retrieval": Command("vsa_dist.stages.evaluate:retrieval_main", EvalConfig),
        "captions": Command("vsa_dist.stages.evaluate:captions_main", EvalConfig),
        "snippets": Command("vsa_dist.stages.evaluate:snippets_main", EvalConfig),
        "regions": Command("vsa_dist.stages.evaluate:regions_main", RegionEvalConfig),
    },
    "caption": Command("vsa_dist.stages.caption:main", CaptionConfig),
    "search": Command("vsa_dist.stages.search:main", SearchConfig),
    "report": Command("vsa_dist.stages.report:main", ReportConfig),
    "tune": Command("vsa_dist.stages.tune:main", TuneConfig),
    "pipeline": Command("vsa_dist.stages.pipeline:main", PipelineConfig),
    "models": {"": Command("vsa_dist.stages.models:main", ModelsConfig),
               "promote": Command("vsa_dist.stages.models:promote_main", PromoteConfig)},
}


# What each command does, for ``vsa --help`` (kept here, not read from the stages: importing a stage imports torch
# and Ray, seconds before a line of help could print).
DESCRIPTIONS: dict[str, str] = {
    "shards": "image-caption data to WebDataset shards",
    "shards build": "Flickr8k/30k token files, Karpathy dataset_*.json or COCO captions_*.json to shards",
    "features": "the CNN's whole-image and region features of every image in the shards (Ray Data)",
    "train-align": "train the alignment model (regions and words in one space) on the features (Ray Train)",
    "train-mrnn": "train the caption generator (MRNN) on the features (Ray Train)",
    "align-snippets": "each sentence's words assigned to regions (the snippet MRF), the generator's region data",
    "eval": "score a checkpoint on a split",
    "eval retrieval": "image-sentence retrieval both ways: R@1/5/10 and median rank",
    "eval captions": "BLEU-1..4, METEOR, ROUGE-L and CIDEr of a generator's captions",
    "eval snippets": "how well snippets find their regions back",
    "eval regions": "a generator's captions of image regions against the test snippets aligned to them",
    "caption": "captions for your own images from a registered generator (or a model folder)",
    "search": "a sentence's best images in your folders or shards (or an image's best sentences)",
    "report": "an HTML page of a run's test images, captions and aligned regions",
    "tune": "choose a stage's settings on dev (Ray Tune, ASHA)",
    "pipeline": "shards, features, alignment, snippets, generator and report in one command",
    "models": "the registered models: their versions, aliases, data and scores; promote a version",
    "models [NAME…]": "every registered version: aliases, data set, dev and test scores, training minutes",
    "models promote": "point an alias (default @champion) at a version: vsa models promote NAME VERSION",
}


def _usage(prefix: str, table: dict) -> str:
    group = prefix.removeprefix("vsa").strip()
    lines = []
    for name in table:
        name = name or "[NAME…]"  # the group's own command, run when no subcommand is named
        key = f"{group} {name}".strip()
        lines.append(f"  {name:<16}{DESCRIPTIONS.get(key, '')}".rstrip())
    top = "  --version       the installed vsa-dist's version\n" if prefix == "vsa" else ""
    return f"usage: {prefix} <command> [--help]\n\ncommands:\n" + "\n".join(lines) + f"\n\noptions:\n{top}" \
        "  -h, --help      this list; COMMAND --help: the command's options\n"


def main(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    table, prefix = COMMANDS, "vsa"
    while True:
        if prefix == "vsa" and argv[:1] == ["--version"]:
            print(f"vsa-dist {metadata.version('vsa-dist')}")
            raise SystemExit(0)
        if not argv or argv[0] in ("-h", "--help"):
            print(_usage(prefix, table), end="")
            raise SystemExit(0 if argv else 2)
        name = argv.pop(0)
        target = table.get(name)
        if target is None:
            sys.stderr.write(f"{prefix}: unknown command {name!r}\n" + _usage(prefix, table))
            raise SystemExit(2)
        prefix = f"{prefix} {name}"
        if isinstance(target, dict):
            table = target
            if "" in table and (not argv or argv[0] not in table and argv[0] not in ("-h", "--help")):
                target = table[""]  # the group's own command: `vsa models` lists, `vsa models promote …` promotes
            else:
                continue
        # the config first: --help, --print-config and a bad flag end here, before the stage is imported
        cfglib.parse_args(target.config, argv, prog=prefix, preset=target.config.PRESET)
        module, func = target.runner.split(":")
        return getattr(importlib.import_module(module), func)(argv)


def console() -> None:
    """Console-script entry: stage results are for callers of ``main``, not for the exit status."""
    main()


if __name__ == "__main__":
    console()
