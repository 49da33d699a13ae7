"""How good is snippet alignment, where a number is possible (held-out images, no region labels exist)?

- Region–snippet retrieval: each snippet (the mean of its words' vectors s_t) ranks every region of every
  image of the split, 1,000 × 20 for Flickr8k test; R@K is the share of snippets whose own region (the
  one the MRF gave it) is among the top K. The MRF gives a snippet the best region of its own image for
  its words, so this is also the share whose own image is found at region level (measured: the two
  counts were equal at every K on Flickr8k dev, and only the first is kept).
- Where snippets go: the share aligned to the whole-image row vs to specific regions, and their length.
"""

from __future__ import annotations

from typing import Any

import torch

from vsa_dist.eval.retrieval import encode_split
from vsa_dist.models.snippets import align_words, snippets


@torch.no_grad()
def evaluate_snippets(model, features: torch.Tensor, tokens: torch.Tensor, beta: float, ks=(1, 5, 10),
                      chunk: int = 1000) -> dict[str, Any]:
    model.eval()
    encoded = encode_split(model, features, tokens)
    regions = encoded["regions"]                                           # [N, 1+R, h]
    num_images, per_image = regions.shape[:2]
    vectors, owners, own_regions, lengths = [], [], [], []
    offset = 0
    for words, masks in zip(encoded["words"], encoded["masks"]):
        image_of = encoded["image_of"][offset:offset + len(words)]
        offset += len(words)
        scores = torch.einsum("brh,bth->btr", regions[image_of], words)   # each sentence against its own image
        assignment, _ = align_words(scores, masks.sum(dim=1).long(), beta)
        for row, image in enumerate(image_of.tolist()):
            for region, start, end in snippets(assignment[row].tolist()):
                vectors.append(words[row, start:end].mean(dim=0))
                owners.append(image)
                own_regions.append(region)
                lengths.append(end - start)
    vectors = torch.stack(vectors)                                         # [P, h]
    owners, own_regions = torch.tensor(owners), torch.tensor(own_regions)
    flat = regions.reshape(num_images * per_image, -1)                     # [N·(1+R), h]
    target = owners * per_image + own_regions
    region_hits = {k: 0 for k in ks}
    for start in range(0, len(vectors), chunk):
        scores = vectors[start:start + chunk] @ flat.T                     # [c, N·(1+R)]
        top = scores.topk(max(ks), dim=1).indices
        own = target[start:start + chunk, None]
        for k in ks:
            region_hits[k] += int((top[:, :k] == own).any(dim=1).sum())
    count = len(vectors)
    return {"snippets": count, "beta": beta,
            "mean_words_per_snippet": round(sum(lengths) / count, 3),
            "whole_image_share": round(float((own_regions == 0).float().mean()), 4),
            **{f"r{k}": round(100 * region_hits[k] / count, 2) for k in ks},
            "candidates": num_images * per_image}
