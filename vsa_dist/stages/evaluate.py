"""``vsa eval``: score a trained model's checkpoint on a split of a feature folder.

    vsa eval retrieval --checkpoint runs/flickr8k/align/best.pt --features runs/flickr8k/features
    vsa eval retrieval --checkpoint A/best.pt --ensemble B/best.pt --features F   # summed, each at its own scale
    vsa eval captions --checkpoint runs/flickr8k/mrnn/best.pt --features runs/flickr8k/features --beam 3
    vsa eval captions --checkpoint C --features F --split dev --beam 5 --length-penalty 0.5   # a decoding, on dev
    vsa eval captions --checkpoint A/best.pt --ensemble B/best.pt,C/best.pt --features F --beam 3   # decoded as one
    vsa eval snippets --checkpoint runs/flickr8k/align/best.pt --features runs/flickr8k/features --beta 1
    vsa eval regions --checkpoint runs/flickr8k/mrnn-regions/best.pt --snippets runs/flickr8k/snippets-test

Retrieval: image annotation and image search, R@1/5/10 and median rank, over every image of the split
and its sentences. Captions: BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap, Java) against every
reference sentence of each image. Snippets: region–snippet retrieval R@K and where snippets go
(``vsa_dist/eval/snippets.py``). Regions: a generator's captions of image regions against the test
snippets an alignment model put in them (``vsa_dist/eval/regions.py``). Prints the metrics as JSON; ``--out FILE``
also writes them.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from vsa_dist import config as cfglib
from vsa_dist import console, storage
from vsa_dist.checkpoints import generator_decoding, load_alignment, load_generator
from vsa_dist.configs import EvalConfig, RegionEvalConfig
from vsa_dist.data.manifests import as_pixel_input, takes_pixels
from vsa_dist.data.pairs import word_index
from vsa_dist.data.shards import load_manifest, read_samples, shard_paths
from vsa_dist.data.splits import load_split
from vsa_dist.eval.captions import caption_metrics, diversity, score_captions
from vsa_dist.eval.regions import dangling, region_items
from vsa_dist.eval.retrieval import evaluate_alignment
from vsa_dist.eval.snippets import evaluate_snippets
from vsa_dist.features.format import check_model_matches, check_same_settings, load_features_manifest, settings_of
from vsa_dist.models.decoding import generate
from vsa_dist.models.mrnn import MRNNEnsemble
from vsa_dist.stages import run_stage


def _check_features_match(cfg: EvalConfig, *states: dict[str, Any]) -> None:
    """Each checkpoint was trained on features made like ``cfg.features`` (else a clear error); a model that runs its
    whole CNN, on the images of the shards that folder was made from."""
    settings = check_same_settings({cfg.features: load_features_manifest(cfg.features)})
    for state in states:
        check_model_matches(cfg.features, as_pixel_input(settings, takes_pixels(state)), state)


def _split(cfg: EvalConfig, state: dict[str, Any], whole_image_only: bool) -> dict[str, Any]:
    _check_features_match(cfg, state)
    pixels = takes_pixels(state) and state["feature_settings"]["input_size"]  # the images, decoded from the shards
    split = load_split(cfg.features, cfg.split, word_index(state["vocab"]), state["config"]["max_words"],
                       whole_image_only=whole_image_only, image_size=pixels or 0)
    split["other_data"] = _other_data(cfg, state, split)
    return split


def _other_data(cfg: EvalConfig, state: dict[str, Any], split: dict[str, Any]) -> dict[str, Any]:
    """Scores on data the model was not trained on are a fair question (train on one corpus, test on another), but
    they must say so: the folder's vocabulary is not the model's, and the share of the split's words it cannot read
    goes to stderr and into the scores' record ({} for the model's own data)."""
    words = load_features_manifest(cfg.features)["vocab"]["words"]
    if words == state["vocab"]:
        return {}
    known = set(state["vocab"])
    tokens = [word for sentences in split["sentence_tokens"] for sentence in sentences for word in sentence]
    unknown = sum(word not in known for word in tokens) / max(len(tokens), 1)
    print(f"vsa eval: {cfg.features} is not the data {cfg.checkpoint} was trained on: its vocabulary has {len(words)} "
          f"words, the model's {len(known)}; {100 * unknown:.1f} % of the {cfg.split} sentences' words are unknown to "
          "the model", file=console.err(), flush=True)
    return {"other_data": {"features_vocabulary": len(words), "model_vocabulary": len(known),
                           "unknown_word_share": round(unknown, 4)}}


def _finish(cfg: EvalConfig | RegionEvalConfig, metrics: dict[str, Any],
            details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Print the metrics as JSON; with ``--out``, also write them (and ``details``, for the file only)."""
    print(json.dumps(metrics, indent=1))
    if cfg.out:
        storage.write_bytes(cfg.out, (json.dumps({**metrics, **(details or {})}, indent=1) + "\n").encode())
    return metrics


def run_retrieval(cfg: EvalConfig) -> dict[str, Any]:
    model, state = load_alignment(storage.fetch(cfg.checkpoint))
    split = _split(cfg, state, whole_image_only=False)
    members = [model, *(member for member, _ in _ensemble_members(cfg, state, load_alignment))]
    metrics = evaluate_alignment(members, torch.from_numpy(split["features"]), torch.from_numpy(split["tokens"]).long())
    return _finish(cfg, {"split": cfg.split, "images": len(split["image_ids"]), **_ensemble_record(cfg), **metrics,
                         **split["other_data"]})


def _ensemble_members(cfg: EvalConfig, state: dict[str, Any], load_model) -> list[tuple[Any, dict[str, Any]]]:
    """The ``--ensemble`` checkpoints, each checked to share ``--checkpoint``'s vocabulary and feature settings."""
    loaded = [load_model(storage.fetch(path)) for path in cfg.ensemble]
    for path, (_, member_state) in zip(cfg.ensemble, loaded):
        if member_state["vocab"] != state["vocab"]:
            raise ValueError(f"ensemble checkpoint {path}: its vocabulary differs from {cfg.checkpoint}'s")
    _check_features_match(cfg, *(member_state for _, member_state in loaded))
    return loaded


def _ensemble_record(cfg: EvalConfig) -> dict[str, Any]:
    return {"ensemble": [cfg.checkpoint, *cfg.ensemble]} if cfg.ensemble else {}


def run_captions(cfg: EvalConfig) -> dict[str, Any]:
    model, state = load_generator(storage.fetch(cfg.checkpoint))
    members = _ensemble_members(cfg, state, load_generator)
    # the regions too when any member attends over them; the others read row 0 of them
    split = _split(cfg, state, not any(m.args.attention for m in [model, *(member for member, _ in members)]))
    if cfg.images:
        split = {k: v if k in ("split", "other_data") else v[:cfg.images] for k, v in split.items()}  # per image
    beam, max_len, penalty = generator_decoding(state, cfg.beam, cfg.length_penalty)
    if cfg.ensemble:
        model = MRNNEnsemble([model, *(member for member, _ in members)])
    captions = generate(model, torch.from_numpy(split["features"]).float(), state["vocab"], beam, max_len, penalty)
    metrics = score_captions(split, captions)
    return _finish(cfg, {"split": cfg.split, "images": len(captions), "beam": beam, "length_penalty": penalty,
                         "mean_words": sum(len(c.split()) for c in captions) / len(captions),
                         **diversity(captions), **_ensemble_record(cfg), **metrics, **split["other_data"]})


def run_snippets(cfg: EvalConfig) -> dict[str, Any]:
    if cfg.ensemble:
        raise cfglib.ConfigError(
            "vsa eval snippets: --ensemble is for retrieval and captions (snippets come from one model's alignment)"
        )
    model, state = load_alignment(storage.fetch(cfg.checkpoint))
    split = _split(cfg, state, whole_image_only=False)
    metrics = evaluate_snippets(model, torch.from_numpy(split["features"]).float(),
                                torch.from_numpy(split["tokens"]).long(), cfg.beta)
    return _finish(cfg, {"split": cfg.split, "images": len(split["image_ids"]), **metrics, **split["other_data"]})


def run_regions(cfg: RegionEvalConfig) -> dict[str, Any]:
    model, state = load_generator(storage.fetch(cfg.checkpoint))
    check_model_matches(cfg.snippets, settings_of(load_manifest(cfg.snippets)), state)
    items = region_items(read_samples(shard_paths(cfg.snippets, [cfg.split])), cfg.min_words)
    if not items["keys"]:
        raise ValueError(f"snippets {cfg.snippets}: no region of the {cfg.split} split has a snippet of "
                         f"{cfg.min_words}+ words")
    features = torch.from_numpy(items["features"]).float()
    if model.args.attention:  # a region alone is all an attending model may look at
        features = features[:, None, :]
    beam, max_len, penalty = generator_decoding(state, cfg.beam, cfg.length_penalty)
    captions = generate(model, features, state["vocab"], beam, max_len, penalty)
    by_key = dict(zip(items["keys"], captions))
    metrics = caption_metrics(items["references"], by_key)
    ending = sum(dangling(c) for c in captions)
    summary = {"split": cfg.split, "regions": len(captions), "images": len({k.split("#")[0] for k in by_key}),
               "references_per_region": sum(map(len, items["references"].values())) / len(captions), "beam": beam,
               "length_penalty": penalty,
               "mean_words": sum(len(c.split()) for c in captions) / len(captions),
               **diversity(captions), "dangling_endings": ending, **metrics}
    regions = [{"region": k, "box": [round(float(x), 1) for x in box], "caption": by_key[k],
                "references": items["references"][k]} for k, box in zip(items["keys"], items["boxes"])]
    return _finish(cfg, summary, {"captions": regions})


def regions_main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_stage(RegionEvalConfig, run_regions, argv, prog="vsa eval regions", preset=None,
                            input_errors=(ValueError,))


def snippets_main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_stage(EvalConfig, run_snippets, argv, prog="vsa eval snippets", preset=None,
                            input_errors=(ValueError,))


def retrieval_main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_stage(EvalConfig, run_retrieval, argv, prog="vsa eval retrieval", preset=None,
                            input_errors=(ValueError,))


def captions_main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_stage(EvalConfig, run_captions, argv, prog="vsa eval captions", preset=None,
                            input_errors=(ValueError, RuntimeError))
