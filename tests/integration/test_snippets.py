"""The snippet stage on the mini features: every word aligned, beta sets the snippet length."""

from __future__ import annotations

import pytest
from conftest import untrained_alignment_checkpoint

from vsa_dist.data.pairs import word_index


def test_align_snippets_stage_covers_every_word_and_beta_sets_snippet_length(mini_features, tmp_path, ray_cluster):
    import json as jsonlib

    from vsa_dist.cli import main as vsa
    from vsa_dist.data.shards import read_samples, shard_paths

    checkpoint = untrained_alignment_checkpoint(mini_features, tmp_path / "best.pt")
    stats = {}
    for beta in ("0", "1000000"):
        out = tmp_path / f"snippets-{beta}"
        manifest = vsa(["align-snippets", "--checkpoint", str(checkpoint), "--features", str(mini_features),
                        "--out", str(out), "--beta", beta, "--splits", "train,dev", "--progress", "false"])
        assert manifest["counts"]["images"] == {"input": 150, "written": 150, "rejected": 0}
        stats[beta] = manifest["statistics"]["train"]
        for sample in read_samples(shard_paths(out, ["dev"])):
            meta = jsonlib.loads(sample["json"])
            for k, sentence in enumerate(meta["sentences"]):
                pieces = sorted((s["start"], s["end"], s["words"]) for s in meta["snippets"] if s["sentence"] == k)
                # the snippets tile the sentence (as cut to max_words), in order, without gaps
                assert [w for _, _, words in pieces for w in words] == sentence["tokens"][:32]
                assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
                if beta != "0":
                    assert len(pieces) == 1
            assert all(0 <= s["region"] < 20 for s in meta["snippets"])
    assert stats["1000000"]["snippets_per_sentence"] == 1.0
    assert stats["0"]["mean_words_per_snippet"] < stats["1000000"]["mean_words_per_snippet"]

    again = vsa(["align-snippets", "--checkpoint", str(checkpoint), "--features", str(mini_features),
                 "--out", str(tmp_path / "snippets-0"), "--beta", "0", "--splits", "train,dev", "--progress", "false"])
    assert again["build"] == {**again["build"], "shards_built": 0, "shards_reused": 5}


def test_snippets_of_the_modern_model_read_every_region(mini_features, tmp_path, ray_cluster):
    """A modern-preset model that scores an image by its whole-image vector alone (``--local-weight 0``: training and
    retrieval project only v_0) still gives the snippet MRF its word–region affinities v_iᵀ s_t over every region:
    the snippets land on regions, not only on the whole image, and each snippet's mean score is its words'
    affinities with its region."""
    import json as jsonlib

    import torch

    from vsa_dist.checkpoints import load_alignment
    from vsa_dist.cli import main as vsa
    from vsa_dist.data.pairs import encode_sentences
    from vsa_dist.data.shards import read_samples, shard_paths
    from vsa_dist.features.format import npy_load

    checkpoint = untrained_alignment_checkpoint(mini_features, tmp_path / "best.pt", preset="train_align_modern",
                                                local_weight=0.0)
    model, state = load_alignment(checkpoint)
    assert (model.args.local_weight, model.args.word_rnn, model.args.cosine) == (0.0, "gru", True)
    out = tmp_path / "snippets"
    vsa(["align-snippets", "--checkpoint", str(checkpoint), "--features", str(mini_features), "--out", str(out),
         "--beta", "0.1", "--splits", "dev", "--progress", "false"])
    regions, index = set(), word_index(state["vocab"])
    for sample in read_samples(shard_paths(out, ["dev"])):
        meta = jsonlib.loads(sample["json"])
        tokens = torch.from_numpy(encode_sentences(meta["sentences"], index, 32)).long()
        features = torch.from_numpy(npy_load(sample["feat.npy"])).float()
        with torch.no_grad():
            affinities, _ = model.word_region_scores(features.expand(len(tokens), -1, -1), tokens)
        for snippet in meta["snippets"]:
            words = affinities[snippet["sentence"], snippet["start"]:snippet["end"], snippet["region"]]
            assert snippet["score"] == pytest.approx(words.mean().item(), abs=2e-4)  # rounded to 4 decimals
            regions.add(snippet["region"])
    assert len(regions) > 5, regions
