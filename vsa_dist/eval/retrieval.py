"""Bidirectional retrieval metrics (the paper's Table 1), computed in chunks. Imports only torch.

Image annotation: for each image, the rank of the best-ranked of its ground-truth sentences among all
sentences. Image search: for each sentence, the rank of its image among all images. Ranks start at 1;
R@K is the percentage of queries with rank <= K; "medr" is the median rank.

Only [image_chunk, sentence_chunk] blocks of the score matrix exist at any time, so memory is bounded
by the chunk sizes, not by the number of images (5,000 COCO test images work the same way).
Ties count against the query (a wrong item with an equal score ranks ahead), so a constant scorer
gets the worst ranks, never the best.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

ScoreFn = Callable[[slice, slice], torch.Tensor]  # (image slice, sentence slice) → scores [i, s]


def retrieval_ranks(score_block: ScoreFn, num_images: int, sentence_image: torch.Tensor,
                    image_chunk: int = 100, sentence_chunk: int = 1000,
                    positive: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(annotation ranks [num_images], search ranks [num_sentences]), 1-based.

    ``sentence_image[l]`` is the index of sentence l's image. ``positive[l]``, S[image(l), l], may be given
    when the caller has it more cheaply than from the blocks: otherwise a first pass over (nearly) every block
    finds it, and the score matrix is computed twice.
    """
    num_sentences = len(sentence_image)
    if positive is None:
        positive = torch.empty(num_sentences)
        for s0 in range(0, num_sentences, sentence_chunk):
            sl = slice(s0, min(s0 + sentence_chunk, num_sentences))
            owners = sentence_image[sl]
            for i0 in range(0, num_images, image_chunk):
                il = slice(i0, min(i0 + image_chunk, num_images))
                mine = (owners >= il.start) & (owners < il.stop)
                if mine.any():
                    block = score_block(il, sl)
                    cols = torch.nonzero(mine).flatten()
                    positive[s0 + cols] = block[owners[cols] - il.start, cols]
    best_positive = torch.full((num_images,), -torch.inf)
    best_positive.scatter_reduce_(0, sentence_image, positive, reduce="amax")

    images_ahead = torch.zeros(num_sentences)      # images scoring >= the sentence's own, itself excluded
    sentences_ahead = torch.zeros(num_images)      # non-matching sentences scoring >= the image's best match
    for i0 in range(0, num_images, image_chunk):
        il = slice(i0, min(i0 + image_chunk, num_images))
        image_ids = torch.arange(il.start, il.stop)
        for s0 in range(0, num_sentences, sentence_chunk):
            sl = slice(s0, min(s0 + sentence_chunk, num_sentences))
            block = score_block(il, sl)
            own = sentence_image[sl][None, :] == image_ids[:, None]          # [i, s]: sentence belongs to image
            images_ahead[sl] += ((block >= positive[sl][None, :]) & ~own).sum(dim=0)
            sentences_ahead[il] += ((block >= best_positive[il][:, None]) & ~own).sum(dim=1)
    return sentences_ahead + 1, images_ahead + 1


def recall_metrics(ranks: torch.Tensor) -> dict[str, float]:
    ranks = ranks.float()
    return {"r1": 100 * (ranks <= 1).double().mean().item(),
            "r5": 100 * (ranks <= 5).double().mean().item(),
            "r10": 100 * (ranks <= 10).double().mean().item(),
            "medr": float(ranks.quantile(0.5).item())}  # numpy's median: the mean of the middle two


def retrieval_metrics(score_block: ScoreFn, num_images: int, sentence_image: torch.Tensor,
                      image_chunk: int = 100, sentence_chunk: int = 1000,
                      positive: torch.Tensor | None = None) -> dict[str, dict[str, float]]:
    annotation, search = retrieval_ranks(score_block, num_images, sentence_image, image_chunk, sentence_chunk,
                                         positive)
    return {"annotation": recall_metrics(annotation), "search": recall_metrics(search)}


@torch.no_grad()
def encode_split(model, features: torch.Tensor, tokens: torch.Tensor, sentence_chunk: int = 1000,
                 encode_chunk: int = 500) -> dict[str, Any]:
    """Region vectors of N images [N, 1+R, D] and word vectors of their sentences [N, S, T], in chunks.

    Empty sentence rows (all PAD) are skipped. Sentences are encoded in order of length, so a chunk is
    only as wide as its longest sentence; ``image_of`` / ``slot`` say whose sentence each one is.
    """
    lengths = (tokens != 0).sum(dim=-1)                                   # [N, S]
    image_of, slot = torch.nonzero(lengths > 0, as_tuple=True)
    order = lengths[image_of, slot].argsort(stable=True)
    image_of, slot = image_of[order], slot[order]
    sentence_tokens = tokens[image_of, slot]                              # [M, T], shortest first
    sentence_lengths = lengths[image_of, slot]
    device = next(model.parameters()).device  # a model on a GPU (rank 0 of a GPU run) encodes there
    regions = torch.cat([model.embed_scored_regions(features[i : i + encode_chunk].to(device))
                         for i in range(0, len(features), encode_chunk)])
    words, masks = [], []
    for s0 in range(0, len(sentence_tokens), sentence_chunk):
        width = int(sentence_lengths[s0:s0 + sentence_chunk].max())
        w, m = model.embed_words(sentence_tokens[s0:s0 + sentence_chunk, :width].to(device))
        words.append(w)
        masks.append(m)
    return {"regions": regions, "words": words, "masks": masks, "image_of": image_of, "slot": slot,
            "sentence_chunk": sentence_chunk}


def evaluate_alignment(model, features: torch.Tensor, tokens: torch.Tensor, image_chunk: int = 100,
                       sentence_chunk: int = 1000, encode_chunk: int = 500) -> dict[str, dict[str, float]]:
    """Retrieval metrics of an alignment model on N images [N, 1+R, D] with their sentences [N, S, T]
    (the ranks do not depend on the order ``encode_split`` puts the sentences in).

    ``model`` may also be a list of models over one vocabulary, scored as one: the sum of the members' scores,
    each divided by the spread of its own scores (``ensemble_scales``), so that no member outvotes the others by
    the scale of its vectors (a model that sums over words scores in the tens, one that averages in ones).
    """
    members = list(model) if isinstance(model, (list, tuple)) else [model]
    modes = [member.training for member in members]
    for member in members:
        member.eval()
    encoded = [encode_split(member, features, tokens, sentence_chunk, encode_chunk) for member in members]

    def member_block(member, enc: dict[str, Any], il: slice, sl: slice) -> torch.Tensor:
        chunk = sl.start // sentence_chunk  # retrieval_ranks asks for exactly these sentence chunks
        return member.score(enc["regions"][il], enc["words"][chunk], enc["masks"][chunk]).cpu()  # ranked here

    scales = ensemble_scales([lambda il, sl, m=m, e=e: member_block(m, e, il, sl) for m, e in zip(members, encoded)],
                             image_chunk, sentence_chunk)

    def block(il: slice, sl: slice) -> torch.Tensor:
        return sum(member_block(m, e, il, sl) / scale for m, e, scale in zip(members, encoded, scales))

    # Each sentence with its own image alone: a thousandth of the score matrix's work, where finding these scores
    # in its blocks costs a whole extra pass over it.
    positive = sum(torch.cat([m.paired_score(e["regions"][owners], words, masks).cpu() for owners, words, masks in
                              zip(e["image_of"].split(sentence_chunk), e["words"], e["masks"])]) / scale
                   for m, e, scale in zip(members, encoded, scales))
    result = retrieval_metrics(block, len(features), encoded[0]["image_of"], image_chunk, sentence_chunk, positive)
    for member, mode in zip(members, modes):
        member.train(mode)
    return result


def ensemble_scales(member_blocks: list[ScoreFn], image_chunk: int, sentence_chunk: int) -> list[float]:
    """Each ensemble member's score spread: the standard deviation of its first block of scores (first images ×
    first sentences: no labels used). 1 for a lone model, whose scores stay as they are."""
    if len(member_blocks) == 1:
        return [1.0]
    first = (slice(0, image_chunk), slice(0, sentence_chunk))
    spreads = [float(block(*first).std()) for block in member_blocks]
    return [spread if math.isfinite(spread) and spread > 0 else 1.0 for spread in spreads]  # constant scorers


@torch.no_grad()
def score_matrix(model, features: torch.Tensor, tokens: torch.Tensor, image_chunk: int = 100) -> dict[str, Any]:
    """The whole image × sentence score matrix S [N, M] of a split (the report's retrieval examples), with
    each sentence's (image, slot)."""
    model.eval()
    encoded = encode_split(model, features, tokens)
    columns = []
    for words, masks in zip(encoded["words"], encoded["masks"]):
        columns.append(torch.cat([model.score(encoded["regions"][i:i + image_chunk], words, masks)
                                  for i in range(0, len(features), image_chunk)]))
    return {"scores": torch.cat(columns, dim=1), "image_of": encoded["image_of"], "slot": encoded["slot"]}


# Karpathy & Fei-Fei (2015), Table 1, BRNN on Flickr8K: the row the suite measures itself against.
PAPER_ROW = {"annotation": {"r1": 16.5, "r5": 40.6, "r10": 54.2, "medr": 7.6},
             "search": {"r1": 11.8, "r5": 32.1, "r10": 44.7, "medr": 12.4}}


def beats_row(metrics: dict[str, dict[str, float]], row: dict[str, dict[str, float]] = PAPER_ROW) -> bool:
    """Whether ``metrics`` beat ``row`` in all eight columns: every R@K higher, both median ranks lower."""
    return all(metrics[d][k] > v if k != "medr" else metrics[d][k] < v for d in row for k, v in row[d].items())


def rsum(metrics: dict[str, dict[str, float]]) -> float:
    """Model selection score: R@1 + R@5 + R@10 of both directions."""
    return sum(metrics[d][k] for d in ("annotation", "search") for k in ("r1", "r5", "r10"))


def flat_metrics(prefix: str, metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{prefix}_{d}_{k}": v for d, values in metrics.items() for k, v in values.items()}


def retrieval_line(metrics: dict[str, dict[str, float]] | None) -> str:
    """Both directions in one line, in the units the paper prints: R@1 / R@5 / R@10 in %, median rank."""
    if not metrics:
        return "not tested"
    return ", ".join(f"{label} R@1/5/10 {metrics[d]['r1']:.1f} / {metrics[d]['r5']:.1f} / {metrics[d]['r10']:.1f} "
                     f"(med r {metrics[d]['medr']:g})"
                     for d, label in (("annotation", "image→text"), ("search", "text→image")))
