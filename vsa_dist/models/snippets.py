"""Snippet alignment (section 3.1.4 of the paper): each word of a sentence gets an image region.

The assignment a = (a_1 … a_N) minimises the energy

    E(a) = Σ_j ψ_U(a_j) + Σ_j β·[a_j ≠ a_{j+1}],     ψ_U(a_j = i) = −v_iᵀ s_j,

a chain MRF, solved exactly by dynamic programming (Viterbi), vectorised over sentences and regions.
β = 0 gives each word its best region; a large β gives the whole sentence one region; in between,
runs of words with the same region are the snippets.
"""

from __future__ import annotations

import torch


def align_words(scores: torch.Tensor, lengths: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact minimum-energy region per word.

    scores: [B, N, R] word–region scores v_iᵀ s_j (padding words: anything); lengths: [B] words per sentence.
    Returns (assignment [B, N] region index, −1 on padding; energy [B]).
    """
    batch, words, regions = scores.shape
    unary = -scores.float()
    present = torch.arange(words, device=scores.device)[None, :] < lengths[:, None]  # [B, N]
    cost = unary[:, 0]  # [B, R]: least energy of words 0..j ending in region r
    back = torch.zeros(batch, words, regions, dtype=torch.long, device=scores.device)
    for j in range(1, words):
        best_prev, best_region = cost.min(dim=1, keepdim=True)  # switching: from the best region, paying β
        switch = best_prev + beta
        stay_better = cost <= switch
        step = torch.where(stay_better, cost, switch) + unary[:, j]
        back[:, j] = torch.where(stay_better, torch.arange(regions, device=scores.device).expand(batch, -1),
                                 best_region.expand(-1, regions))
        # past a sentence's end the cost is carried unchanged, so its final minimum is its own
        cost = torch.where(present[:, j, None], step, cost)
    energy, last = cost.min(dim=1)
    assignment = torch.full((batch, words), -1, dtype=torch.long, device=scores.device)
    current = last
    for j in range(words - 1, -1, -1):
        here = present[:, j]
        assignment[:, j] = torch.where(here, current, assignment[:, j])
        if j > 0:
            previous = back[:, j].gather(1, current[:, None]).squeeze(1)
            current = torch.where(here, previous, current)
    return assignment, energy


def energy_of(scores: torch.Tensor, assignment: torch.Tensor, beta: float) -> torch.Tensor:
    """E(a) of one sentence's assignment ([N] region indices, no padding): what ``align_words`` minimises."""
    unary = -scores.float()[torch.arange(len(assignment)), assignment].sum()
    switches = (assignment[1:] != assignment[:-1]).sum()
    return unary + beta * switches


def snippets(assignment: list[int]) -> list[tuple[int, int, int]]:
    """Runs of equal regions: (region, first word, last word + 1) for one sentence (padding dropped)."""
    runs: list[tuple[int, int, int]] = []
    for j, region in enumerate(a for a in assignment if a >= 0):
        if runs and runs[-1][0] == region and runs[-1][2] == j:
            runs[-1] = (region, runs[-1][1], j + 1)
        else:
            runs.append((region, j, j + 1))
    return runs
