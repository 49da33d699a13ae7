"""One typed config dataclass per job: defaults from a YAML preset, then a user YAML, then CLI flags.

Every field of the dataclass becomes a ``--field-name`` flag. Unknown keys in a YAML file are an error
(a typo must not silently fall back to a default). ``validate()`` checks the values alone (no I/O: a tuner checks
each point of its search space with it) and may fill derived defaults; then the config is frozen, and
``check_inputs()`` looks at the files it names before any work starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from vsa_dist.errors import ConfigError  # noqa: F401  (raised here, caught by stages.run_stage; stages import it from here)
from vsa_dist.options import interval, option  # noqa: F401  (configs import option from here)

C = TypeVar("C")


class Config:
    """Base of every job's config dataclass: frozen once resolved (what a run logs is what it ran with; a change is a
    new config, ``dataclasses.replace``). ``validate`` (values alone, no I/O) and ``check_inputs`` (the files it
    names) are the stage's own."""

    _frozen = False
    PRESET: str | None = None  # the preset a command starts from, when it has one (a class attribute, not a key)

    def __setattr__(self, name: str, value: Any) -> None:
        if self._frozen:
            raise dataclasses.FrozenInstanceError(f"{type(self).__name__}.{name}: the config is frozen once "
                                                  "resolved; use dataclasses.replace")
        super().__setattr__(name, value)

    def validate(self) -> None:
        """Checks of the values alone (no I/O); may fill defaults derived from other fields."""

    def check_inputs(self) -> None:
        """Checks of the files and services the config names, before any work starts."""


def freeze(cfg: C) -> C:
    object.__setattr__(cfg, "_frozen", True)
    return cfg


def _preset_text(name: str) -> str | None:
    """A preset by name (vsa_dist/presets/NAME.yaml), or a preset file by path (what ``vsa tune`` writes)."""
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        return path.read_text(encoding="utf-8-sig") if path.is_file() else None
    preset = resources.files("vsa_dist.presets").joinpath(f"{name}.yaml")
    return preset.read_text() if preset.is_file() else None


def preset_exists(name: str) -> bool:
    return _preset_text(name) is not None


def read_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}{line}: not valid YAML: {problem}") from err
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys, got {type(values).__name__}")
    return values


def _is_list(tp: Any) -> bool:
    return typing.get_origin(tp) is list


def _scalar_type(tp: Any) -> Any:
    """The concrete type behind ``X | None``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return args[0]
    return tp


TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Turn a YAML or CLI value into the field's type, with an error that names the key."""
    tp = _scalar_type(tp)
    if value is None:
        return None
    try:
        if _is_list(tp):
            (item_tp,) = typing.get_args(tp) or (str,)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v.strip()]
            return [_coerce(name, item_tp, v) for v in value]
        if tp is bool:
            return value if isinstance(value, bool) else _parse_bool(str(value))
        if tp is dict or typing.get_origin(tp) is dict:
            return json.loads(value) if isinstance(value, str) else dict(value)
        if tp in (int, float, str):
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError("not an integer")
            return tp(value)
    except (ValueError, TypeError, argparse.ArgumentTypeError, json.JSONDecodeError) as err:
        kind = getattr(tp, "__name__", tp)
        raise ConfigError(f"config key {name!r}: cannot read {value!r} as {kind}: {err}") from err
    return value


def check_ranges(cfg: Any) -> None:
    """Every numeric field whose metadata gives a ``range`` (interval notation, e.g. '(0, inf)' or '[0, 1)') holds a
    value inside it, and every field with ``choices`` one of them: a negative learning rate must stop the stage in a
    second, not inside Ray a minute later."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        if "choices" in f.metadata and getattr(cfg, f.name) not in f.metadata["choices"]:
            raise ConfigError(f"{f.name} {getattr(cfg, f.name)!r} is not one of {f.metadata['choices']}")
        if "range" not in f.metadata:
            continue
        value = getattr(cfg, f.name)
        if value is None and _scalar_type(hints[f.name]) is not hints[f.name]:
            continue  # an optional field (``float | None``) left unset
        low, high, low_closed, high_closed = interval(f.metadata["range"])
        inside = isinstance(value, (int, float)) and not isinstance(value, bool) and (
            (value >= low if low_closed else value > low) and (value <= high if high_closed else value < high))
        if not inside:
            raise ConfigError(f"{f.name} {value!r} is outside its range {f.metadata['range']}")


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default if f.default is not dataclasses.MISSING else None


def build_parser(cls: type, prog: str, shown: dict[str, Any] | None = None,
                 description: str | None = None) -> argparse.ArgumentParser:
    """One ``--field-name`` flag per field; ``(default: …)`` shows ``shown`` (the preset and --config applied) where
    given, so that ``--preset X --help`` tells what a run with that preset would use."""
    shown = shown or {}
    parser = argparse.ArgumentParser(prog=prog, description=description or (cls.__doc__ or "").strip())
    parser.add_argument("--config", help="YAML file of config keys, applied over the preset")
    own = presets_for(cls)
    parser.add_argument(
        "--preset", help=f"a preset of vsa_dist/presets/ ({', '.join(own)}) or a preset .yaml file (vsa tune writes "
                         "one), applied over the defaults" if own else "a .yaml file of this command's keys, applied "
                         "over the defaults (no packaged preset is for this command)"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit (inputs are not checked)"
    )
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's and the workers' full output here too (it always goes to the log file)")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        help_text = f.metadata.get("help", "") + (f"; range {f.metadata['range']}" if "range" in f.metadata else "")
        default = shown.get(f.name, _field_default(f))
        metavar = f.name.upper()
        if "choices" in f.metadata:
            metavar = "{" + ",".join(f.metadata["choices"]) + "}"
        elif hints[f.name] is bool:
            metavar = "[true|false]"
            help_text += "; the flag alone means true"
        if f.metadata.get("positional"):  # e.g. vsa caption IMAGE...
            parser.add_argument(f.name, nargs="*", default=argparse.SUPPRESS, metavar=f.name.upper().rstrip("S"),
                                help=f"{help_text} (default: {default})")
            continue
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=argparse.SUPPRESS,
            metavar=metavar,
            help=f"{help_text} (default: {default})",
        )
    return parser


def presets() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("vsa_dist.presets").iterdir()
                  if p.name.endswith(".yaml"))


def presets_for(cls: type) -> list[str]:
    """The packaged presets whose every key (their bases' too) is one of ``cls``'s fields: the ones for its command. A
    preset that only names the defaults (no keys) is its own command's (``cls.PRESET``)."""
    fields = {f.name for f in dataclasses.fields(cls)}

    def fits(name: str) -> bool:
        keys = {key for _, values in _preset_layers(name) for key in values}
        return keys <= fields if keys else name == getattr(cls, "PRESET", None)

    return [name for name in presets() if fits(name)]


def layered(cls: type, preset: str | None, values: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """The dataclass defaults, then the preset's YAML, then ``values``, each key read as its field's type. A preset
    that does not exist and an unknown key are errors (a typo must not silently fall back to a default)."""
    hints = typing.get_type_hints(cls)
    merged = {f.name: _field_default(f) for f in dataclasses.fields(cls)}
    layers = [*_preset_layers(preset), (source, values)]
    for where, layer in layers:
        unknown = sorted(set(layer) - set(hints))
        if unknown:
            raise ConfigError(f"{where}: unknown config key(s) {unknown}; known keys: {sorted(hints)}")
        for key, value in layer.items():
            merged[key] = _coerce(key, hints[key], value)
    return merged


def _preset_layers(preset: str | None, seen: tuple[str, ...] = ()) -> list[tuple[str, dict[str, Any]]]:
    """A preset's values, after those of the preset it names as its base (``preset: NAME`` in its YAML: a short
    schedule of another preset says only what it changes)."""
    if preset is None:
        return []
    if preset in seen:
        raise ConfigError(f"preset {preset!r}: its bases name it again ({' -> '.join((*seen, preset))})")
    text = _preset_text(preset)
    if text is None:
        raise ConfigError(f"preset {preset!r}: no such preset in vsa_dist/presets/ (there are {presets()}) and no "
                          "such .yaml file")
    values = read_yaml(text, f"preset {preset}.yaml")
    base = values.pop("preset", None)
    return [*_preset_layers(base, (*seen, preset)), (f"preset {preset}.yaml", values)]


def resolve(cls: type[C], preset: str | None, values: dict[str, Any], source: str = "config",
            validate: bool = True) -> C:
    """Build ``cls`` from its defaults, the preset, then ``values``; ranges checked, then (with ``validate``) the
    stage's own ``validate()`` (no I/O); frozen."""
    merged = layered(cls, preset, values, source)
    try:
        cfg = cls(**merged)
    except TypeError as err:
        raise ConfigError(f"{source}: {err}") from err
    check_ranges(cfg)
    if validate and hasattr(cfg, "validate"):
        cfg.validate()
    return freeze(cfg)


def ready(cls: type[C], preset: str | None, values: dict[str, Any]) -> C:
    """``resolve`` then ``check_inputs``: a config built in code (the pipeline's stages) checked as ``main`` does."""
    cfg = resolve(cls, preset, values)
    cfg.check_inputs()
    return cfg


def _read_config_file(config_file: str) -> dict[str, Any]:
    path = Path(config_file)
    if not path.is_file():
        raise ConfigError(f"--config {config_file}: no such file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 (byte offset {err.start})") from err
    return read_yaml(text, str(path))


def parse_args(cls: type[C], argv: list[str] | None, prog: str, preset: str | None = None) -> C:
    """CLI entry: defaults → preset → ``--config`` YAML → ``--flags``. Exits 2 with one line on a bad config."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # --preset and --config first: --help shows the values they set
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--preset")
    early.add_argument("--config")
    known, _ = early.parse_known_args(argv)
    try:
        preset = known.preset or preset
        from_file = _read_config_file(known.config) if known.config else {}
        shown = layered(cls, preset, from_file, known.config or "command line")
    except ConfigError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    parser = build_parser(cls, prog, shown)
    args = vars(parser.parse_args(_switches(cls, argv)))
    for key in ("config", "preset"):
        args.pop(key, None)
    print_config = args.pop("print_config", False)
    args.pop("verbose", None)  # read by stages.run_stage
    try:
        cfg = resolve(cls, preset, {**from_file, **args}, source=known.config or "command line",
                      validate=not print_config)
    except ConfigError as err:
        parser.exit(2, f"{prog}: error: {err}\n")
    if print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        raise SystemExit(0)
    return cfg


def _switches(cls: type, argv: list[str]) -> list[str]:
    """A boolean flag given alone (``--cosine``, ``--cosine --epochs 3``, or last) reads as ``--cosine true``; with a
    value (``--cosine false``) it is left as it is. Done before argparse, which cannot take a flag's value as
    optional without also taking a positional argument after it (``vsa caption --flag photo.jpg``) as that value."""
    hints = typing.get_type_hints(cls)
    flags = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(cls) if hints[f.name] is bool}
    out = []
    for i, token in enumerate(argv):
        out.append(token)
        if token in flags and (i + 1 == len(argv) or argv[i + 1].strip().lower() not in TRUE_WORDS + FALSE_WORDS):
            out.append("true")
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data, saved with every output, checkpoint and MLflow run."""
    out = {}
    for key, value in dataclasses.asdict(cfg).items():
        out[key] = str(value) if isinstance(value, Path) else value
    return out
