"""The alignment model against the paper's equations and brute force: score, loss, gradients, gathering, retrieval."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import REPO

from vsa_dist.eval.retrieval import evaluate_alignment, retrieval_ranks
from vsa_dist.models.alignment import PAD, AlignmentArgs, AlignmentModel


def tiny_model(**kw) -> AlignmentModel:
    torch.manual_seed(0)
    model = AlignmentModel(AlignmentArgs(vocab_size=30, feature_dim=8, embed_dim=6, word_dim=5, **kw)).eval()
    for rec in (model.forward_rec, model.backward_rec) if model.gru is None else ():  # away from the identity start:
        torch.nn.init.normal_(rec.weight, std=0.3)                                     # a real test of the recurrences
        torch.nn.init.normal_(rec.bias, std=0.1)
    return model


def batch(num: int = 4, regions: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(num, regions, 8, generator=g)
    lengths = [5, 2, 4, 1, 3, 5][:num]
    tokens = torch.full((num, 7), PAD)  # two columns past the longest sentence: the model skips them
    for i, n in enumerate(lengths):
        tokens[i, :n] = torch.randint(2, 30, (n,), generator=g)
    return features, tokens, lengths


def paper_words(model: AlignmentModel, ids: list[int]) -> torch.Tensor:
    """s_t for one unpadded sentence, step by step as the paper writes it."""
    relu = torch.relu
    x = model.word_vectors.weight[ids]
    e = relu(x @ model.word_in.weight.T + model.word_in.bias)
    h = e.shape[1]
    hf, hb = [], [None] * len(ids)
    prev = torch.zeros(h)
    for t in range(len(ids)):
        prev = relu(e[t] + model.forward_rec.weight @ prev + model.forward_rec.bias)
        hf.append(prev)
    prev = torch.zeros(h)
    for t in reversed(range(len(ids))):
        prev = relu(e[t] + model.backward_rec.weight @ prev + model.backward_rec.bias)
        hb[t] = prev
    return torch.stack([relu(model.word_out.weight @ (f + b) + model.word_out.bias) for f, b in zip(hf, hb)])


def gru_words(model: AlignmentModel, ids: list[int]) -> torch.Tensor:
    """s_t for one unpadded sentence through the bidirectional GRU, each direction step by step."""
    gru, x = model.gru, model.word_vectors.weight[ids]

    def run(suffix: str, order: list[int]) -> dict[int, torch.Tensor]:
        cell = torch.nn.GRUCell(x.shape[1], gru.hidden_size)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).data = getattr(gru, f"{name}_l0{suffix}").data
        state, states = torch.zeros(1, gru.hidden_size), {}
        for t in order:
            state = cell(x[t][None], state)
            states[t] = state[0]
        return states

    forward, backward = run("", list(range(len(ids)))), run("_reverse", list(reversed(range(len(ids)))))
    return torch.stack([model.word_out.weight @ (forward[t] + backward[t]) + model.word_out.bias
                        for t in range(len(ids))])


def gpo_by_hand(pool, vectors: torch.Tensor) -> torch.Tensor:
    """GPO over one set [n, h], as Chen et al. (2021) write it: each dimension sorted from the largest down,
    weighed by softmax(w · BiGRU(sine encodings of positions 1 … n) / 0.1)."""
    n, dim = len(vectors), pool.encoding_dim
    encoding = torch.zeros(n, dim)
    for p in range(1, n + 1):
        for i in range(0, dim, 2):
            encoding[p - 1, i] = np.sin(p / 10000 ** (i / dim))
            encoding[p - 1, i + 1] = np.cos(p / 10000 ** (i / dim))
    out, _ = pool.gru(encoding[None])
    forward, backward = out[0].chunk(2, dim=-1)
    weights = torch.softmax(pool.out((forward + backward) / 2)[:, 0] / 0.1, dim=0)
    return (weights[:, None] * vectors.sort(dim=0, descending=True).values).sum(dim=0)


def scan_by_hand(v: torch.Tensor, s: torch.Tensor, t: int) -> float:
    """Word t's text-to-image score as Lee et al. (2018) write it: cosines clipped by a leaky ReLU, each region's
    normalised over the sentence's words, a softmax over the regions at λ_1 = 9 weighing the regions into the
    attended vector a_t, and cos(s_t, a_t)."""
    cosines = torch.tensor([[float(torch.nn.functional.cosine_similarity(v[i], s[j], dim=0)) for i in range(len(v))]
                            for j in range(len(s))])                               # [words, regions]
    clipped = torch.where(cosines > 0, cosines, 0.1 * cosines)
    normed = clipped / clipped.pow(2).sum(dim=0, keepdim=True).sqrt()
    weights = torch.exp(9 * normed[t]) / torch.exp(9 * normed[t]).sum()
    attended = sum(weights[i] * v[i] for i in range(len(v)))
    return float(torch.nn.functional.cosine_similarity(attended, s[t], dim=0))


@pytest.mark.parametrize("options", [
    {"score_norm": "sum", "l2_features": False}, {"score_norm": "mean", "l2_features": False}, {"score_norm": "sum"},
    # beyond the paper
    {"word_rnn": "gru"}, {"cosine": True}, {"word_rnn": "gru", "cosine": True, "global_weight": 0.5},
    {"global_weight": 2.0, "l2_features": False}, {"word_rnn": "gru", "cosine": True, "global_weight": 1.0,
                                                   "local_weight": 0.0},
    {"word_rnn": "gru", "cosine": True, "global_weight": 1.0, "global_pooling": "gpo"},
    {"word_rnn": "gru", "cosine": True, "global_weight": 1.0, "local_weight": 0.0, "global_pooling": "gpo"},
    {"word_rnn": "gru", "cosine": True, "local_pooling": "attention"},
    {"word_rnn": "gru", "cosine": True, "global_weight": 1.0, "local_pooling": "attention", "score_norm": "sum"}])
def test_the_score_is_its_equation(options):
    """S_kl against brute force: the paper's sum (or mean) over words of the best region's dot product, s_t step by
    step through the BRNN or the GRU (each sentence read over its own words only), and beyond the paper unit-length
    vectors and the global term cos(v_0, mean_t s_t) beside the region–word one (or alone), or its GPO-pooled
    form over all the region vectors and the words, and SCAN's attention over the regions in place of the max."""
    options = {"score_norm": "mean", "local_weight": 0.7, **options}
    model = tiny_model(**options)
    args = model.args
    exact = args.word_rnn == "relu" and not args.cosine  # the paper's arithmetic: tighter tolerances
    features, tokens, lengths = batch()
    with torch.no_grad():
        regions = model.embed_regions(features)
        words, mask = model.embed_words(tokens)
        scores = model.score(regions, words, mask)
        for l, n in enumerate(lengths):
            s = (gru_words if args.word_rnn == "gru" else paper_words)(model, tokens[l, :n].tolist())
            s = s / s.norm(dim=-1, keepdim=True) if args.cosine else s
            torch.testing.assert_close(words[l, :n], s, rtol=1e-5 if exact else 1e-4, atol=1e-6 if exact else 1e-5)
            assert (words[l, n:] == 0).all()
            for k in range(len(features)):
                f = features[k] / features[k].norm(dim=-1, keepdim=True) if args.l2_features else features[k]
                v = f @ model.region_proj.weight.T + model.region_proj.bias
                v = v / v.norm(dim=-1, keepdim=True) if args.cosine else v
                if args.local_pooling == "attention":
                    local = sum(scan_by_hand(v, s, t) for t in range(n))
                else:
                    local = sum(max(float(v[i] @ s[t]) for i in range(len(v))) for t in range(n))
                local = local / n if args.score_norm == "mean" else local
                if args.global_pooling == "gpo":
                    image, sentence = gpo_by_hand(model.image_pool, v), gpo_by_hand(model.sentence_pool, s)
                else:
                    image, sentence = v[0], s.mean(dim=0)
                whole = float(torch.nn.functional.cosine_similarity(image, sentence, dim=0))
                expected = args.local_weight * local + args.global_weight * whole if args.global_weight else local
                assert scores[k, l].item() == pytest.approx(expected, rel=1e-5 if exact else 1e-4, abs=1e-5)
        # Each image with its own sentence alone (retrieval's positives): the diagonal of the matrix.
        torch.testing.assert_close(model.paired_score(regions, words, mask), scores.diagonal(),
                                   rtol=1e-6 if exact else 1e-5, atol=1e-6)


def test_a_whole_image_model_scores_the_whole_image_alone():
    """``regions=False`` (the ablation's whole-image row): the regions' rows change nothing, and the loss and the
    retrieval scores are those of the same weights given the whole image's row only."""
    whole_only, with_regions = tiny_model(regions=False), tiny_model()
    features, tokens, _ = batch(regions=4)
    shuffled = features.clone()
    shuffled[:, 1:] = torch.randn_like(shuffled[:, 1:])
    with torch.no_grad():
        loss = whole_only(features, tokens)
        assert loss.item() == pytest.approx(whole_only(shuffled, tokens).item())
        assert loss.item() == pytest.approx(with_regions(features[:, :1], tokens).item())
        assert loss.item() != pytest.approx(with_regions(features, tokens).item())
        metrics = evaluate_alignment(whole_only, features, tokens[:, None])
        assert metrics == evaluate_alignment(with_regions, features[:, :1], tokens[:, None])


def test_hardest_negatives_start_after_their_warm_up():
    from vsa_dist.recipes.align import AlignConfig, AlignTask
    from vsa_dist.training.session import RunSpec

    cfg = AlignConfig(features="f", hardest_negative=True, hardest_warmup_epochs=2)
    task, model = AlignTask(RunSpec(cfg, ["a"], 8, {}, "", "")), tiny_model(hardest_negative=True)
    scores = torch.randn(5, 5, generator=torch.Generator().manual_seed(3)) * 2
    by_epoch = []
    for epoch in (1, 2, 3):
        task.begin_epoch(model, epoch)
        by_epoch.append(model.loss(scores).item())
    assert by_epoch[0] == by_epoch[1] == pytest.approx(tiny_model().loss(scores).item())  # all negatives
    assert by_epoch[2] == pytest.approx(tiny_model(hardest_negative=True).loss(scores).item())
    assert by_epoch[2] < by_epoch[0]


@pytest.mark.parametrize("hardest", [False, True])
def test_loss_is_the_papers_bidirectional_hinge(hardest):
    model = tiny_model(hardest_negative=hardest)
    scores = torch.randn(5, 5, generator=torch.Generator().manual_seed(3)) * 2
    per_image, per_sentence = [], []
    for k in range(5):
        row = [max(0.0, scores[k, l].item() - scores[k, k].item() + 1) for l in range(5) if l != k]
        col = [max(0.0, scores[l, k].item() - scores[k, k].item() + 1) for l in range(5) if l != k]
        per_image.append(max(row) if hardest else sum(row))
        per_sentence.append(max(col) if hardest else sum(col))
    assert model.loss(scores).item() == pytest.approx(sum(per_image) + sum(per_sentence), rel=1e-6)


@pytest.mark.parametrize("hardest", [False, True])
def test_workers_shares_of_the_loss_add_up_to_the_whole_batch(hardest):
    """Data parallel with gathered negatives: each worker's local loss (and its gradient) summed over the workers
    equals the loss of the whole batch on one worker."""
    model = tiny_model(hardest_negative=hardest)
    features, tokens, _ = batch(num=6)
    whole = model(features, tokens)
    whole_grads = torch.autograd.grad(whole, list(model.parameters()))
    shares, grads = [], None
    for start in (0, 2, 4):  # three "workers" of 2 pairs
        def gather(regions, words, mask, start=start):  # what all_gather returns, the rows of the others included
            return (model.embed_regions(features), *model.embed_words(tokens)), start
        share = model(features[start:start + 2], tokens[start:start + 2], gather=gather)
        shares.append(share.item())
        g = torch.autograd.grad(share, list(model.parameters()), allow_unused=True)
        g = [torch.zeros_like(p) if x is None else x for x, p in zip(g, model.parameters())]
        grads = g if grads is None else [a + b for a, b in zip(grads, g)]
    assert sum(shares) == pytest.approx(whole.item(), rel=1e-5)
    for a, b in zip(grads, whole_grads):  # every row's and column's terms sit in exactly one share
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def grouped_batch(num: int = 4, slots: int = 3, seed: int = 2):
    """Each image with all its sentence slots, [num, slots, 7]; image 1 has only two sentences (an empty slot)."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(num, 3, 8, generator=g)
    tokens = torch.full((num, slots, 7), PAD)
    for i in range(num):
        for j in range(slots if i != 1 else slots - 1):
            n = int(torch.randint(1, 6, (1,), generator=g))
            tokens[i, j, :n] = torch.randint(2, 30, (n,), generator=g)
    return features, tokens


@pytest.mark.parametrize("hardest", [False, True])
def test_all_sentences_of_an_image_are_positives_not_negatives(hardest):
    """With each image's sentences all in the step: every sentence is a positive pair with its own image, ranked
    against every other image and every other image's sentences (its image's other sentences are not negatives;
    an empty slot is neither); brute force over the score matrix."""
    model = tiny_model(hardest_negative=hardest, word_rnn="gru", cosine=True, global_weight=1.0, margin=0.2)
    features, tokens = grouped_batch()
    num, slots, _ = tokens.shape
    with torch.no_grad():
        words, mask = model.embed_words(tokens.flatten(0, 1))
        scores = model.score(model.embed_regions(features), words, mask)       # [images, images × slots]
        loss = model(features, tokens).item()
    present = [(i, j) for i in range(num) for j in range(slots) if (tokens[i, j] != PAD).any()]
    expected = 0.0
    for i, j in present:
        positive = scores[i, i * slots + j].item()
        by_image = [max(0.0, scores[k, i * slots + j].item() - positive + 0.2) for k in range(num) if k != i]
        by_sentence = [max(0.0, scores[i, k * slots + q].item() - positive + 0.2) for k, q in present if k != i]
        expected += max(by_image) + max(by_sentence) if hardest else sum(by_image) + sum(by_sentence)
    assert len(present) == num * slots - 1 and loss == pytest.approx(expected, rel=1e-5)
    # workers' shares of the whole batch add up to it, all sentences of their images included
    shares = []
    for start in (0, 2):
        def gather(regions, words, mask, start=start):
            return (model.embed_scored_regions(features), *model.embed_words(tokens.flatten(0, 1))), start
        with torch.no_grad():
            shares.append(model(features[start:start + 2], tokens[start:start + 2], gather=gather).item())
    assert sum(shares) == pytest.approx(loss, rel=1e-5)


def _gathered_worker(rank: int, world: int, port: int, out: str) -> None:
    """One of two real gloo processes: its half of the batch, negatives gathered from the other."""
    import torch.distributed as dist

    from vsa_dist.distributed import gather_across_workers

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model = tiny_model()
    features, tokens, _ = batch(num=6)
    rows = slice(rank * 3, rank * 3 + 3)
    loss = model(features[rows], tokens[rows], gather=gather_across_workers)
    loss.backward()
    torch.save({"loss": loss.item(), "grads": [p.grad for p in model.parameters()]}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_gather_across_two_real_processes_gives_the_whole_batch_gradient(tmp_path):
    """Two gloo processes, each with half the batch: their losses add up to the whole batch's, and their
    gradients (what DDP's all-reduce sums) to its gradient — the gather's backward hands each row's gradient
    from every worker's loss back to the row's owner."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_gathered_worker, args=(2, port, str(tmp_path)), nprocs=2)
    shares = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    model = tiny_model()
    features, tokens, _ = batch(num=6)
    whole = model(features, tokens)
    whole.backward()
    assert shares[0]["loss"] + shares[1]["loss"] == pytest.approx(whole.item(), rel=1e-5)
    for (name, param), a, b in zip(model.named_parameters(), shares[0]["grads"], shares[1]["grads"]):
        torch.testing.assert_close(a + b, param.grad, rtol=1e-4, atol=1e-5, msg=name)
    assert not torch.allclose(shares[0]["grads"][0], shares[1]["grads"][0])  # the workers' shares really differ


@pytest.mark.parametrize("options", [{}, {"word_rnn": "gru", "cosine": True, "global_weight": 1.0},
                                     {"word_rnn": "gru", "global_weight": 1.0, "local_weight": 0.0},
                                     {"word_rnn": "gru", "cosine": True, "global_weight": 1.0, "local_weight": 0.0,
                                      "global_pooling": "gpo"},
                                     {"word_rnn": "gru", "cosine": True, "local_pooling": "attention"}])
def test_gradients_reach_every_parameter(options):
    # DDP stops at the first step when a parameter gets no gradient: a model holds only what its options use
    model = tiny_model(**options).train()
    features, tokens, _ = batch()
    model(features, tokens).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert (model.word_vectors.weight.grad[PAD] == 0).all()  # padding never learns


def brute_ranks(scores: np.ndarray, owner: np.ndarray):
    """Ranks by sorting every row and column, ties against the query."""
    annotation = []
    for k in range(scores.shape[0]):
        row = scores[k]
        ranks = [
            1 + sum(row[j] >= row[l] for j in range(len(row)) if owner[j] != k) for l in np.flatnonzero(owner == k)
        ]
        annotation.append(min(ranks))
    search = [1 + sum(scores[i, l] >= scores[owner[l], l] for i in range(scores.shape[0]) if i != owner[l])
              for l in range(scores.shape[1])]
    return np.array(annotation), np.array(search)


def test_data_clock_counts_the_wait_for_batches_not_the_steps():
    from vsa_dist.training.streams import DataClock

    def stream():
        time.sleep(0.3)  # the stream's start-up, before its first batch
        yield from range(3)

    clock = DataClock(stream())
    assert list(_step(batch) for batch in clock) == [0, 1, 2]
    timing = clock.metrics()
    assert timing["first_batch_wait_s"] >= 0.3
    assert 0.3 <= timing["data_wait_share"] * timing["seconds"] < 0.5  # the 3 × 0.2 s of steps are not waiting
    assert timing["seconds"] >= 0.9


def test_epoch_streams_read_the_next_epoch_during_the_evaluation():
    from vsa_dist.training.streams import DataClock, EpochStreams

    epochs_made = []

    def one_epoch():
        epochs_made.append(len(epochs_made) + 1)
        time.sleep(0.4)  # the stream's start-up, before its first batch
        yield from range(3)

    streams = EpochStreams(one_epoch, depth=2)
    first = DataClock(streams.take())
    assert [_step(batch) for batch in first] == [0, 1, 2]
    assert first.metrics()["first_batch_wait_s"] >= 0.35  # nothing was started early for the first epoch
    streams.start_next()
    time.sleep(0.6)  # rank 0's dev evaluation: the next stream starts up meanwhile
    second = DataClock(streams.take())
    assert [_step(batch) for batch in second] == [0, 1, 2]
    assert second.metrics()["first_batch_wait_s"] < 0.1
    assert epochs_made == [1, 2]
    streams.start_next()
    streams.start_next()  # a second call does not start a third stream
    list(streams.take())
    assert epochs_made == [1, 2, 3]

    def broken():
        yield 1
        raise OSError("shard-000003.tar: truncated")

    streams = EpochStreams(broken, depth=1)
    streams.start_next()
    with pytest.raises(OSError, match="shard-000003.tar"):  # a reader's error reaches the training thread
        list(streams.take())

    epochs_made.clear()
    streams = EpochStreams(one_epoch, depth=2, read_ahead=False)  # --read-ahead false: nothing starts early
    streams.start_next()
    time.sleep(0.1)
    assert epochs_made == []
    assert list(streams.take()) == [0, 1, 2] and epochs_made == [1]


def test_the_read_workers_row_code_imports_neither_torch_nor_webdataset():
    """Ray starts the train stream's read workers afresh each epoch; torch + webdataset cost them ~1.8 s each."""
    probe = "import sys, vsa_dist.data.pairs; print(sorted({'torch', 'webdataset'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _step(batch: int) -> int:
    time.sleep(0.2)  # a training step
    return batch


def test_chunked_retrieval_equals_brute_force():
    g = torch.Generator().manual_seed(5)
    owner = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 3, 3, 3, 4, 5, 5, 6])
    scores = torch.randint(0, 6, (7, len(owner)), generator=g).float()  # many ties on purpose
    ref_annotation, ref_search = brute_ranks(scores.numpy(), owner.numpy())
    for positive in (None, scores[owner, torch.arange(len(owner))]):  # found in the blocks, or given
        annotation, search = retrieval_ranks(lambda i, s: scores[i, s], 7, owner, image_chunk=3, sentence_chunk=4,
                                             positive=positive)
        assert annotation.tolist() == ref_annotation.tolist() and search.tolist() == ref_search.tolist()


def retrieval_split():
    g = torch.Generator().manual_seed(7)
    features = torch.randn(6, 3, 8, generator=g)
    tokens = torch.full((6, 5, 6), PAD)
    for i in range(6):
        for j in range(1 + i % 5):  # 1 to 5 sentences per image, of different lengths
            n = 1 + (i + j) % 6
            tokens[i, j, :n] = torch.randint(2, 30, (n,), generator=g)
    return features, tokens


def full_scores(model: AlignmentModel, features: torch.Tensor, tokens: torch.Tensor):
    """The whole score matrix [images, sentences] at once, and each sentence's image."""
    with torch.no_grad():
        image, slot = torch.nonzero((tokens != PAD).any(-1), as_tuple=True)
        words, mask = model.embed_words(tokens[image, slot])
        return model.score(model.embed_regions(features), words, mask).numpy(), image.numpy()


def test_evaluate_alignment_equals_brute_force_on_a_model():
    model = tiny_model()
    features, tokens = retrieval_split()
    result = evaluate_alignment(model, features, tokens, image_chunk=4, sentence_chunk=3, encode_chunk=2)
    assert_metrics_match(result, *brute_ranks(*full_scores(model, features, tokens)))


def test_an_ensemble_ranks_by_the_sum_of_its_members_spread_normalised_scores():
    import copy

    summing, averaging = tiny_model(), tiny_model(score_norm="mean")
    torch.manual_seed(3)
    for parameter in averaging.parameters():  # another model, not the same one averaged
        torch.nn.init.normal_(parameter, std=0.5)
    features, tokens = retrieval_split()
    chunks = {"image_chunk": 4, "sentence_chunk": 3, "encode_chunk": 2}
    result = evaluate_alignment([summing, averaging], features, tokens, **chunks)

    # Brute force: each member's whole matrix divided by the spread of its first 4 images × first 3 sentences in
    # the order the evaluation encodes them (shortest first), then summed.
    lengths = (tokens != PAD).sum(-1)
    image, slot = torch.nonzero(lengths > 0, as_tuple=True)
    first = lengths[image, slot].argsort(stable=True)[:3].numpy()
    total = 0
    for member in (summing, averaging):
        full, owner = full_scores(member, features, tokens)
        total = total + full / full[:4, first].std(ddof=1)
    assert_metrics_match(result, *brute_ranks(total, owner))

    # A member's scale does not count: a model with itself at three times its scores ranks as the model alone.
    tripled = copy.deepcopy(summing)
    with torch.no_grad():
        tripled.region_proj.weight.mul_(3)
        tripled.region_proj.bias.mul_(3)
    assert evaluate_alignment([summing, tripled], features, tokens, **chunks) == evaluate_alignment(
        summing, features, tokens, **chunks
    )


def assert_metrics_match(result: dict, annotation: np.ndarray, search: np.ndarray) -> None:
    assert result["annotation"]["r1"] == pytest.approx(100 * np.mean(annotation <= 1))
    assert result["annotation"]["r5"] == pytest.approx(100 * np.mean(annotation <= 5))
    assert result["search"]["r1"] == pytest.approx(100 * np.mean(search <= 1))
    assert result["search"]["medr"] == float(np.median(search))
    assert result["annotation"]["medr"] == float(np.median(annotation))


def test_beating_the_papers_row_takes_all_eight_columns():
    from vsa_dist.eval.retrieval import PAPER_ROW, beats_row

    better = {d: {k: v - 1 if k == "medr" else v + 1 for k, v in PAPER_ROW[d].items()} for d in PAPER_ROW}
    assert beats_row(better)
    for d in PAPER_ROW:
        for k in PAPER_ROW[d]:
            tied = {e: dict(better[e]) for e in better}
            tied[d][k] = PAPER_ROW[d][k]  # a tie is not a win, at a recall or at a median rank
            assert not beats_row(tied), (d, k)
