"""Caption metrics as the captioning papers report them: pycocoevalcap's BLEU-1..4, METEOR, ROUGE-L and
CIDEr, after its PTB tokenizer, each candidate scored against every reference sentence of its image.

METEOR and the tokenizer are Java programs shipped inside pycocoevalcap; SPICE is left out (it needs a
Stanford CoreNLP download, which fails offline).
"""

from __future__ import annotations

import math
import shutil
from typing import Any

import torch
from pycocoevalcap.bleu.bleu_scorer import BleuScorer
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from vsa_dist.models.losses import token_nll
from vsa_dist.models.mrnn import MRNN, sentence_rows, teacher_forcing

ALL_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")


def require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("caption metrics need Java on PATH: pycocoevalcap's PTB tokenizer and METEOR are Java "
                           "programs (install a JRE, e.g. `apt-get install default-jre-headless`)")
    return java


def _tokenized(references: dict[str, list[str]], candidates: dict[str, str]):
    missing = sorted(set(references) - set(candidates))
    if missing:
        raise ValueError(f"no candidate caption for {len(missing)} image(s), e.g. {missing[:3]}")
    tokenizer = PTBTokenizer()
    # One tokenizer call for both sides: each call starts a JVM.
    both = {("ref", key): [{"caption": c} for c in refs] for key, refs in references.items()}
    # An empty caption would be an empty line, which the tokenizer drops, shifting every later line.
    both.update({("cand", key): [{"caption": candidates[key] or "."}] for key in references})
    tokens = tokenizer.tokenize(both)
    gts = {key: tokens[("ref", key)] for key in references}
    res = {key: tokens[("cand", key)] for key in references}
    return gts, res


def caption_metrics(references: dict[str, list[str]], candidates: dict[str, str],
                    metrics: tuple[str, ...] = ALL_METRICS) -> dict[str, float]:
    """Corpus-level scores (0–1; CIDEr 0–10) for the images in ``references``; with BLEU, also
    ``bleu_length_ratio``: candidate words over the closest references' words, as BLEU's brevity penalty sees them."""
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise ValueError(f"unknown caption metrics {sorted(unknown)}; known: {ALL_METRICS}")
    require_java()
    gts, res = _tokenized(references, candidates)
    out: dict[str, float] = {}
    if any(m.startswith("bleu") for m in metrics):
        # pycocoevalcap's Bleu(4).compute_score, keeping its scorer for the length ratio: the brevity penalty
        # is exp(1 - 1 / ratio) below 1, and tells a short-caption problem from a wrong-word one.
        scorer = BleuScorer(n=4)
        for key in gts:
            scorer += (res[key][0], gts[key])
        bleu, _ = scorer.compute_score(option="closest", verbose=0)
        out.update({f"bleu{n + 1}": float(bleu[n]) for n in range(4) if f"bleu{n + 1}" in metrics})
        out["bleu_length_ratio"] = scorer.testlen("closest") / scorer.reflen("closest")
    if "meteor" in metrics:
        meteor = Meteor()  # a JVM until the object is collected
        out["meteor"] = float(meteor.compute_score(gts, res)[0])
        del meteor
    if "rouge_l" in metrics:
        out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    if "cider" in metrics:
        out["cider"] = float(Cider().compute_score(gts, res)[0])
    return out


def leave_one_out_human(references: dict[str, list[str]], metrics: tuple[str, ...] = ALL_METRICS) -> dict[str, float]:
    """Human agreement: each image's first reference scored against its other ones (a ceiling to compare to)."""
    held_out = {key: refs[0] for key, refs in references.items() if len(refs) > 1}
    rest = {key: refs[1:] for key, refs in references.items() if len(refs) > 1}
    return caption_metrics(rest, held_out, metrics)


def perplexity_of(nll: float, words: int) -> float:
    """exp(mean NLL per word); inf, not an OverflowError, for a model that diverged (its mean NLL past ~709)."""
    mean = nll / max(words, 1)
    return math.exp(mean) if mean < 700 else math.inf


@torch.no_grad()
def perplexity(model: MRNN, features: torch.Tensor, tokens: torch.Tensor, chunk: int = 500) -> float:
    """exp(mean NLL per word, END included) over every sentence of the split."""
    model.eval()
    image_of, sentences = sentence_rows(tokens)  # features indexed per chunk: a split's rows x regions is large
    total, count = 0.0, 0
    for start in range(0, len(sentences), chunk):
        inputs, targets = teacher_forcing(sentences[start:start + chunk], model.args.end)
        images = image_of[start:start + chunk]
        first = int(images[0])  # the chunk's sentences are of consecutive images: pass only those
        nll, n = token_nll(*model(features[first:int(images[-1]) + 1], inputs, image_of=images - first,
                                  targets=targets))
        total, count = total + float(nll), count + int(n)
    return perplexity_of(total, count)


def score_captions(
    split: dict[str, Any], captions: list[str], metrics: tuple[str, ...] | None = None
) -> dict[str, float]:
    references = {key: refs for key, refs in zip(split["image_ids"], split["references"])}
    candidates = dict(zip(split["image_ids"], captions))
    return caption_metrics(references, candidates, *(() if metrics is None else (metrics,)))


def diversity(captions: list[str]) -> dict[str, int]:
    """How varied a model's captions are: distinct captions, and distinct words in use over all of them (a model that
    loops or falls back on a few safe sentences scores low on both, whatever its n-gram scores)."""
    return {"distinct_captions": len(set(captions)),
            "distinct_words": len({word for caption in captions for word in caption.split()})}


def captions_line(scores: dict[str, float] | None) -> str:
    """Caption scores x 100, as papers print them."""
    if not scores:
        return "not tested"
    names = (("bleu1", "BLEU-1"), ("bleu4", "BLEU-4"), ("meteor", "METEOR"), ("rouge_l", "ROUGE-L"), ("cider", "CIDEr"))
    return ", ".join(f"{label} {100 * scores[key]:.1f}" for key, label in names if key in scores) + " (x 100)"
