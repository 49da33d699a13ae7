"""``vsa align-snippets``: every image–sentence pair → (region, text snippet) records, with Ray Data.

    vsa align-snippets --checkpoint runs/flickr8k/align/best.pt --features runs/flickr8k/features \
        --out runs/flickr8k/snippets                       # train split, beta from the preset
    vsa align-snippets … --beta 0 --splits train,dev,test

Each word of each sentence gets a region by the exact chain-MRF programme of ``vsa_dist.models.snippets``
over the trained alignment model's word–region scores v_iᵀ s_t; runs of one region are the snippets. The
feature shards stream through a pool of actors (model loaded once each) and come back as one snippet
shard per feature shard: the feature sample's arrays, plus in its JSON the snippets (sentence, region,
box, words, score). A rerun redoes only missing shards; the manifest holds the snippet statistics.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray.data import ActorPoolStrategy

from vsa_dist import config as cfglib
from vsa_dist import storage
from vsa_dist.checkpoints import load_alignment, read_checkpoint
from vsa_dist.configs import SnippetsConfig
from vsa_dist.data.assembler import REJECTS, ShardAssembler, account, check_sources, plan_shards, resume
from vsa_dist.data.pairs import encode_sentences, word_index
from vsa_dist.data.shards import MANIFEST, read_samples
from vsa_dist.features.format import check_model_matches, check_same_settings, load_features_manifest, npy_load
from vsa_dist.io import atomic_write_json, sha256_file
from vsa_dist.models.snippets import align_words, snippets
from vsa_dist.ray_env import check_placeable, ensure_ray
from vsa_dist.stages import run_stage

SNIPPETS_FORMAT_VERSION = 1
PASS_THROUGH = ("feat.npy", "boxes.npy")


class SnippetAligner:
    """Ray Data actor: a batch of feature samples → the same samples with their snippets in the JSON."""

    def __init__(self, checkpoint: str, beta: float):
        torch.set_num_threads(1)
        self.model, state = load_alignment(storage.fetch(checkpoint))
        self.index, self.max_words, self.beta = word_index(state["vocab"]), state["config"]["max_words"], beta

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            return self._align(batch)

    def _align(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        metas = [json.loads(raw) for raw in batch["json"]]
        features = [torch.from_numpy(npy_load(raw)) for raw in batch["feat.npy"]]
        tokens = [torch.from_numpy(encode_sentences(m["sentences"], self.index, self.max_words)).long() for m in metas]
        owner = torch.cat([torch.full((len(t),), i) for i, t in enumerate(tokens)])
        present = torch.cat(tokens) != 0
        keep = present.any(dim=1)  # sentences with no word left after the cut have nothing to align
        all_tokens, owner = torch.cat(tokens)[keep], owner[keep]
        sentence_of = torch.cat([torch.arange(len(t)) for t in tokens])[keep]
        scores, lengths = self.model.word_region_scores(torch.stack(features)[owner], all_tokens)
        assignment, _ = align_words(scores, lengths, self.beta)
        per_image: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(metas))}
        for p in range(len(all_tokens)):
            image, sentence = int(owner[p]), int(sentence_of[p])
            words = metas[image]["sentences"][sentence]["tokens"][: self.max_words]
            for region, start, end in snippets(assignment[p].tolist()):
                per_image[image].append({"sentence": sentence, "region": region, "start": start, "end": end,
                                         "words": words[start:end],
                                         "score": round(float(scores[p, start:end, region].mean()), 4)})
        out_json = []
        for i, meta in enumerate(metas):
            meta["snippets"], meta["beta"] = per_image[i], self.beta
            out_json.append(json.dumps(meta, ensure_ascii=False).encode("utf-8"))
        return {"__key__": batch["__key__"], "__url__": batch["__url__"], "json": np.array(out_json, dtype=object),
                **{name: batch[name] for name in PASS_THROUGH}}


def snippet_statistics(samples) -> dict[str, Any]:
    """Mean snippet length (words), snippets per sentence, and the share aligned to the whole image (region 0)."""
    lengths, whole, sentences = [], 0, 0
    for sample in samples:
        meta = json.loads(sample["json"])
        sentences += len({s["sentence"] for s in meta["snippets"]})
        for snip in meta["snippets"]:
            lengths.append(snip["end"] - snip["start"])
            whole += snip["region"] == 0
    count = len(lengths)
    return {"snippets": count, "sentences": sentences,
            "mean_words_per_snippet": round(float(np.mean(lengths)), 3) if count else None,
            "snippets_per_sentence": round(count / sentences, 3) if sentences else None,
            "whole_image_share": round(whole / count, 4) if count else None}


def run(cfg: SnippetsConfig) -> dict[str, Any]:
    with storage.output_folder(cfg.out, "snippets") as out_dir:
        return _run(cfg, out_dir)


def _run(cfg: SnippetsConfig, out_dir: Path) -> dict[str, Any]:
    start = time.time()
    features_manifest = load_features_manifest(cfg.features)
    # the checkpoint is read (weights only) and matched to the features before Ray starts: a wrong file fails in seconds
    checkpoint = read_checkpoint(storage.fetch(cfg.checkpoint))
    if (checkpoint.get("model_args") or {}).get("encoder"):
        raise cfglib.ConfigError(f"{cfg.checkpoint}: the model scores whole images through its own CNN (encoder "
                                 "cached or full): it has no regions to align snippets to")
    check_model_matches(cfg.features, check_same_settings({cfg.features: features_manifest}), checkpoint)
    ray = ensure_ray(cfg.progress)
    actors = cfg.actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
    check_placeable({"CPU": 1.0}, actors, f"align-snippets ({actors} aligner actors)")
    settings = {"features": features_manifest["settings"], "beta": cfg.beta,
                "checkpoint_sha256": sha256_file(Path(storage.fetch(cfg.checkpoint))),
                "format_version": SNIPPETS_FORMAT_VERSION}
    plans = plan_shards(cfg.features, features_manifest, cfg.splits, settings)
    state_dir, records, pending = resume(out_dir, plans)
    check_sources(pending, f"vsa features --out {cfg.features}")
    print(f"align-snippets: {len(plans)} shards planned, {len(records)} already complete, {len(pending)} to align "
          f"(beta {cfg.beta}, {actors} actors)", flush=True)
    if pending:
        assembler = ShardAssembler(out_dir, state_dir, pending)
        stream = (ray.data.read_webdataset([p.source for p in pending], decoder=None, num_cpus=0, concurrency=2)
                  .map_batches(SnippetAligner, fn_constructor_kwargs={"checkpoint": cfg.checkpoint, "beta": cfg.beta},
                               batch_size=cfg.batch_size, compute=ActorPoolStrategy(size=actors), num_cpus=1))
        for batch in stream.iter_batches(batch_size=None, batch_format="numpy"):
            for i in range(len(batch["__key__"])):
                assembler.add(batch["__url__"][i], {"__key__": batch["__key__"][i], "json": batch["json"][i],
                                                    **{name: batch[name][i] for name in PASS_THROUGH}})
        records.update(assembler.close())
    split_info, rejects, counts = account(out_dir, plans, records, cfg.splits)
    manifest = {
        "kind": "snippets", "format_version": SNIPPETS_FORMAT_VERSION, "settings": features_manifest["settings"],
        "source": {"features": cfg.features, "checkpoint": cfg.checkpoint, "beta": cfg.beta},
        "config": cfglib.to_dict(cfg), "splits": split_info, "counts": {"images": counts},
        "rejects": {"file": REJECTS, "by_reason": dict(Counter(r["reason"] for r in rejects))},
        "vocab": features_manifest["vocab"],
        "statistics": {split: snippet_statistics(read_samples([str(out_dir / s["shard"]) for s in info["shards"]]))
                       for split, info in split_info.items()},
        "build": {"shards_built": len(pending), "shards_reused": len(plans) - len(pending),
                  "seconds": round(time.time() - start, 2), "actors": actors},
    }
    atomic_write_json(out_dir / MANIFEST, manifest)
    stats = manifest["statistics"]
    print(f"align-snippets: {counts['written']} images -> {cfg.out}; " + "; ".join(
        f"{split}: {s['snippets']} snippets, {s['mean_words_per_snippet']} words each, "
        f"{100 * (s['whole_image_share'] or 0):.1f}% on the whole image" for split, s in stats.items()), flush=True)
    return manifest


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_stage(SnippetsConfig, run, argv, prog="vsa align-snippets", preset=None,
                            input_errors=(ValueError,))
