"""Snippet alignment: the chain-MRF dynamic programme against brute force and its two extremes."""

from __future__ import annotations

import itertools

import torch

from vsa_dist.models.snippets import align_words, energy_of, snippets


def brute_force(scores: torch.Tensor, beta: float) -> float:
    words, regions = scores.shape
    return min(energy_of(scores, torch.tensor(a), beta).item()
               for a in itertools.product(range(regions), repeat=words))


def test_dynamic_programme_finds_the_minimum_energy_of_brute_force_enumeration():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([1, 2, 3, 4, 5, 6, 5, 3])
    scores = torch.randn(len(lengths), 6, 4, generator=generator)
    for beta in (0.0, 0.3, 1.0, 3.0):
        assignment, energy = align_words(scores, lengths, beta)
        for b, n in enumerate(lengths.tolist()):
            best = brute_force(scores[b, :n], beta)
            assert abs(energy[b].item() - best) < 1e-5
            assert abs(energy_of(scores[b, :n], assignment[b, :n], beta).item() - best) < 1e-5
            assert (assignment[b, n:] == -1).all() and (assignment[b, :n] >= 0).all()


def test_beta_zero_takes_each_words_best_region_and_a_huge_beta_one_region_per_sentence():
    scores = torch.randn(5, 7, 20, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([7, 6, 5, 7, 2])
    free, _ = align_words(scores, lengths, beta=0.0)
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(free[b, :n], scores[b, :n].argmax(dim=1))
    tied, _ = align_words(scores, lengths, beta=1e6)
    for b, n in enumerate(lengths.tolist()):
        assert len(set(tied[b, :n].tolist())) == 1
        assert tied[b, 0].item() == scores[b, :n].sum(dim=0).argmax().item()  # the region best for the whole sentence


def test_snippets_are_the_runs_of_one_region():
    assert snippets([3, 3, 0, 0, 0, 3, -1, -1]) == [(3, 0, 2), (0, 2, 5), (3, 5, 6)]
    assert snippets([]) == []


def test_word_region_scores_are_the_alignment_models_own_dot_products():
    from vsa_dist.models.alignment import AlignmentArgs, AlignmentModel

    model = AlignmentModel(AlignmentArgs(vocab_size=30, feature_dim=16, embed_dim=8, word_dim=6)).eval()
    features = torch.randn(3, 5, 16)
    tokens = torch.tensor([[4, 5, 6, 0], [7, 8, 0, 0], [9, 10, 11, 12]])
    scores, lengths = model.word_region_scores(features, tokens)
    assert scores.shape == (3, 4, 5) and lengths.tolist() == [3, 2, 4]
    # The image–sentence score of the paper is the sum over words of each word's best region.
    words, mask = model.embed_words(tokens)
    full = model.score(model.embed_regions(features), words, mask)
    assert torch.allclose(scores.amax(dim=2).mul(mask).sum(dim=1), full.diagonal(), atol=1e-5)


def test_region_snippet_retrieval_matches_a_loop_over_every_snippet_and_region():
    from vsa_dist.eval.snippets import evaluate_snippets
    from vsa_dist.models.alignment import AlignmentArgs, AlignmentModel

    torch.manual_seed(3)
    model = AlignmentModel(AlignmentArgs(vocab_size=20, feature_dim=8, embed_dim=6, word_dim=5)).eval()
    features = torch.randn(7, 4, 8)
    tokens = torch.randint(2, 20, (7, 2, 6))
    tokens[:, :, 4:] = 0
    tokens[0, 1] = 0  # an image with one sentence
    beta = 0.2
    result = evaluate_snippets(model, features, tokens, beta, ks=(1, 3))

    regions = model.embed_regions(features)
    hits, count = {1: 0, 3: 0}, 0
    for image in range(7):
        for slot in range(2):
            if not tokens[image, slot].any():
                continue
            words, mask = model.embed_words(tokens[image, slot][None])
            scores = torch.einsum("rh,th->tr", regions[image], words[0])
            assignment, _ = align_words(scores[None], mask.sum(dim=1).long(), beta)
            for region, start, end in snippets(assignment[0].tolist()):
                count += 1
                vector = words[0, start:end].mean(dim=0)
                everything = [(float(regions[i, r] @ vector), i, r) for i in range(7) for r in range(4)]
                ranked = sorted(everything, key=lambda x: -x[0])
                for k in (1, 3):
                    hits[k] += any((i, r) == (image, region) for _, i, r in ranked[:k])
    assert result["snippets"] == count
    for k in (1, 3):
        assert result[f"r{k}"] == round(100 * hits[k] / count, 2)
