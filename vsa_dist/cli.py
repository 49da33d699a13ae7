"""The ``vsa`` command: one subcommand per stage, each calling the same ``main(argv)`` as jobs/."""

from __future__ import annotations

import importlib
import sys

# name → "module:function"; a nested group is a dict. Only stages that work are listed.
COMMANDS: dict[str, object] = {
    "shards": {"build": "vsa_dist.stages.shards:main"},
    "features": "vsa_dist.stages.features:main",
    "train-align": "vsa_dist.stages.train_align:main",
    "train-mrnn": "vsa_dist.stages.train_mrnn:main",
    "align-snippets": "vsa_dist.stages.align_snippets:main",
    "eval": {
        "retrieval": "vsa_dist.stages.evaluate:retrieval_main",
        "captions": "vsa_dist.stages.evaluate:captions_main",
        "snippets": "vsa_dist.stages.evaluate:snippets_main",
    },
    "caption": "vsa_dist.stages.caption:main",
    "report": "vsa_dist.stages.report:main",
    "tune": "vsa_dist.stages.tune:main",
    "pipeline": "vsa_dist.stages.pipeline:main",
}


def _usage(prefix: str, table: dict) -> str:
    names = "\n".join(f"  {prefix} {name}" for name in table)
    return f"usage: {prefix} <command> [--help]\n\ncommands:\n{names}\n"


def main(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    table, prefix = COMMANDS, "vsa"
    while True:
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
            continue
        module, func = str(target).split(":")
        return getattr(importlib.import_module(module), func)(argv)


def console() -> None:
    """Console-script entry: stage results are for callers of ``main``, not for the exit status."""
    main()


if __name__ == "__main__":
    console()
