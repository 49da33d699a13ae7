"""The MRNN against the paper's recurrence, beam search against greedy and exhaustive search, caption
metrics against hand computation and pycocoevalcap, and a real run: Ray Train DDP, MLflow server,
registry alias, `vsa caption`, and `mlflow models serve` captioning a posted JPEG."""

from __future__ import annotations

import base64
import itertools
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch

from vsa_dist.eval.captions import caption_metrics
from vsa_dist.models.mrnn import MRNN, NEVER_GENERATED, PAD, MRNNArgs, MRNNEnsemble, teacher_forcing, token_nll

VOCAB = 9  # PAD, UNK, 6 words, END


def tiny(cell: str = "rnn", seed: int = 0, vocab: int = VOCAB) -> MRNN:
    """``cell`` rnn, lstm, or lstm-att (an LSTM attending over the image's rows)."""
    torch.manual_seed(seed)
    model = MRNN(MRNNArgs(vocab_size=vocab, feature_dim=6, hidden=16, word_dim=8, cell=cell.removesuffix("-att"),
                          dropout=0.0, attention=cell.endswith("-att"))).eval()
    for p in model.parameters():  # spread the weights: distinct, confident choices make the search tests bite
        torch.nn.init.normal_(p, std=0.8)
    return model


def step_log_probs(model: MRNN, feature: torch.Tensor, words: list[int]) -> torch.Tensor:
    """[T, V] next-word log-probabilities along ``words`` given that PAD and UNK are never generated,
    written out independently of the decoders (teacher forcing, then renormalised)."""
    inputs = torch.tensor([[model.args.end] + words[:-1]])
    with torch.no_grad():
        probs = torch.softmax(model(feature[None], inputs)[0].double(), dim=-1)
    probs[:, list(NEVER_GENERATED)] = 0.0
    return torch.log(probs / probs.sum(dim=-1, keepdim=True))


def sequence_log_prob(model: MRNN | MRNNEnsemble, feature: torch.Tensor, words: list[int]) -> float:
    """log P(words | image); for an ensemble, each step's distribution is the renormalised geometric mean
    of its members'."""
    if isinstance(model, MRNNEnsemble):
        mean = torch.stack([step_log_probs(m, feature, words) for m in model.members]).mean(dim=0)
        log_probs = mean - torch.logsumexp(mean, dim=-1, keepdim=True)
    else:
        log_probs = step_log_probs(model, feature, words)
    return float(sum(log_probs[t, w] for t, w in enumerate(words)))


def test_mrnn_is_the_papers_recurrence():
    model = tiny()
    feature, words = torch.randn(1, 6), [4, 2, 7]
    inputs = torch.tensor([[model.args.end, *words]])
    logits = model(feature, inputs)[0]
    b_v = model.image(torch.nn.functional.normalize(feature, dim=-1) * 6 ** 0.5)[0]  # unit RMS per component
    h = torch.zeros(16)
    for t, w in enumerate([model.args.end, *words]):
        x = model.embed.weight[w]
        h = torch.relu(model.input(x) + model.recurrent.weight @ h + (b_v if t == 0 else 0))
        assert torch.allclose(logits[t], model.output(h), atol=1e-5)


def test_teacher_forcing_starts_and_ends_with_end():
    inputs, targets = teacher_forcing(torch.tensor([[3, 4, 0], [5, 0, 0]]), end=8)
    assert inputs.tolist() == [[8, 3, 4, 0], [8, 5, 0, 0]]
    assert targets.tolist() == [[3, 4, 8, 0], [5, 8, 0, 0]]


def test_attention_is_soft_attention_over_the_images_rows():
    """Step by step: the previous hidden state weighs the rows (whole image first), their weighted values join
    the word vector as the LSTM's input, and the whole image's vector is added to x_1 as without attention."""
    model = tiny("lstm-att")
    rows, words = torch.randn(1, 4, 6), [4, 2, 7]
    logits = model(rows, torch.tensor([[model.args.end, *words]]))[0]
    unit = torch.nn.functional.normalize(rows[0], dim=-1) * 6 ** 0.5
    keys, values, b_v = model.keys(unit), model.values(unit), model.image(unit[0])
    h, c = torch.zeros(1, 16), torch.zeros(1, 16)
    for t, w in enumerate([model.args.end, *words]):
        weights = torch.softmax(torch.stack([model.attend(torch.tanh(k + model.query(h[0]))) for k in keys]).squeeze(-1), 0)
        x = model.embed.weight[w] + (b_v if t == 0 else 0)
        h, c = model.lstm(torch.cat([x, weights @ values])[None], (h, c))
        assert torch.allclose(logits[t], model.output(h[0]), atol=1e-5)
    # One vector per image is one row to attend to; without attention a model reads row 0 of the rows.
    assert torch.allclose(model(rows[:, 0], torch.tensor([[model.args.end]])), model(rows[:, :1], torch.tensor([[model.args.end]])))
    plain = tiny("lstm")
    assert torch.equal(plain(rows, torch.tensor([[8, 3]])), plain(rows[:, 0], torch.tensor([[8, 3]])))
    with pytest.raises(ValueError, match="lstm"):
        MRNN(MRNNArgs(vocab_size=VOCAB, cell="rnn", attention=True))


@pytest.mark.parametrize("cell", ["rnn", "lstm-att"])
def test_sentences_share_their_images_rows_without_copies(cell):
    """``image_of`` (the image layers once per image, training's path) gives what one copy per sentence gives."""
    model, features = tiny(cell, vocab=40), torch.randn(3, 4, 6)
    image_of, inputs = torch.tensor([0, 0, 1, 2, 2, 2]), torch.randint(2, 40, (6, 5))
    assert torch.allclose(model(features, inputs, image_of=image_of), model(features[image_of], inputs), rtol=1e-5, atol=1e-4)


def image_features(cell: str, n: int) -> torch.Tensor:
    """Test images: one vector each, or for an attending model its whole image and three regions."""
    return torch.randn(n, 4, 6) if cell.endswith("-att") else torch.randn(n, 6)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "lstm-att"])
def test_beam_one_is_greedy(cell):
    model = tiny(cell, vocab=40)
    features = image_features(cell, 16)
    assert torch.equal(model.beam_search(features, beam=1, max_len=12), model.greedy(features, max_len=12))


def ensemble_of(cells: str) -> MRNNEnsemble:
    return MRNNEnsemble([tiny(cell, seed=3 + i) for i, cell in enumerate(cells.split("+"))])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "rnn+lstm", "lstm-att", "lstm-att+rnn"])
def test_wide_beam_is_exhaustive_search(cell):
    """With a beam wider than every prefix, beam search must return the most likely sentence of all
    (for an ensemble of an RNN and an LSTM: most likely under the mean of their log-probabilities)."""
    model, max_len = (tiny(cell, seed=3) if "+" not in cell else ensemble_of(cell)), 3
    words = [w for w in range(VOCAB) if w not in NEVER_GENERATED]
    features = image_features(cell.split("+")[0], 6)
    found = model.beam_search(features, beam=len(words) ** (max_len - 1), max_len=max_len)
    for image, row in zip(features, found):
        candidates = [list(seq) for n in range(1, max_len + 1) for seq in itertools.product(words, repeat=n)
                      if (seq[-1] == model.args.end or n == max_len) and model.args.end not in seq[:-1]]
        best = max(candidates, key=lambda seq: sequence_log_prob(model, image, seq))
        got = [w for w in row.tolist() if w != PAD]
        assert sequence_log_prob(model, image, got) == pytest.approx(sequence_log_prob(model, image, best), abs=1e-5)
        greedy = [w for w in model.greedy(image[None], max_len)[0].tolist() if w != PAD]
        assert sequence_log_prob(model, image, got) >= sequence_log_prob(model, image, greedy) - 1e-6


def test_ensemble_of_one_is_the_model_and_members_must_share_a_vocabulary():
    model, features = tiny("lstm", vocab=40), torch.randn(16, 6)
    alone = MRNNEnsemble([model])
    assert torch.equal(alone.greedy(features, 12), model.greedy(features, 12))
    assert torch.equal(alone.beam_search(features, 3, 12), model.beam_search(features, 3, 12))
    pair = ensemble_of("rnn+lstm")
    assert not torch.equal(pair.greedy(features, 12), pair.members[0].greedy(features, 12))
    assert torch.equal(pair.beam_search(features, 1, 12), pair.greedy(features, 12))
    with pytest.raises(ValueError, match="vocabulary"):
        MRNNEnsemble([tiny("rnn"), tiny("rnn", vocab=40)])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "lstm-att"])
def test_tiny_mrnn_overfits_a_handful_of_captions(cell):
    torch.manual_seed(0)
    model = MRNN(MRNNArgs(vocab_size=14, feature_dim=8, hidden=48, word_dim=16, cell=cell.removesuffix("-att"),
                          dropout=0.0, attention=cell.endswith("-att")))
    features = torch.randn(5, 8)
    if model.args.attention:  # one whole-image vector for all five: only the regions tell the images apart
        features = torch.cat([torch.randn(1, 1, 8).expand(5, 1, 8), torch.randn(5, 2, 8)], dim=1)
    captions = torch.tensor([[2, 3, 4, 0, 0], [5, 6, 0, 0, 0], [7, 8, 9, 10, 11], [3, 3, 12, 0, 0], [12, 2, 5, 6, 0]])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        inputs, targets = teacher_forcing(captions, model.args.end)
        nll, count = token_nll(model(features, inputs), targets)
        optimizer.zero_grad()
        (nll / count).backward()
        optimizer.step()
    model.eval()
    for decoded in (model.greedy(features, 8), model.beam_search(features, beam=3, max_len=8)):
        recalled = [[w for w in row if w not in (PAD, model.args.end)] for row in decoded.tolist()]
        assert recalled == [[w for w in row if w != PAD] for row in captions.tolist()]


def test_label_smoothing_mixes_the_reference_word_with_the_whole_vocabulary():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, VOCAB)
    targets = torch.tensor([[3, 4, PAD], [5, VOCAB - 1, 2]])
    log_probs = logits.log_softmax(dim=-1)[targets != PAD]        # [5 words, V]
    words = targets[targets != PAD]
    plain = -log_probs[torch.arange(len(words)), words].sum()
    uniform = -log_probs.mean(dim=-1).sum()                          # ε spread evenly over all V classes
    smoothed, count = token_nll(logits, targets, label_smoothing=0.1)
    assert int(count) == 5
    torch.testing.assert_close(token_nll(logits, targets)[0], plain)
    torch.testing.assert_close(smoothed, 0.9 * plain + 0.1 * uniform)


def test_sampled_log_probs_are_the_models_and_carry_gradients():
    model, features = tiny("lstm", vocab=40), torch.randn(6, 6)
    torch.manual_seed(1)
    ids, log_probs = model(features, sample_len=10)  # through forward, as DDP sees it
    assert log_probs.requires_grad
    for i in range(len(features)):
        words = [w for w in ids[i].tolist() if w != PAD]
        assert words.count(model.args.end) <= 1 and not set(words) & set(NEVER_GENERATED)
        assert log_probs[i].sum().item() == pytest.approx(sequence_log_prob(model, features[i], words), abs=1e-4)
        assert torch.all(log_probs[i, len(words):] == 0)
    log_probs.sum().backward()
    assert model.output.weight.grad.abs().sum() > 0


def test_self_critical_training_raises_the_cider_of_samples():
    """A tiny model sampling captions for four images learns, from CIDEr-D rewards alone (no teacher
    forcing), to say what each image's references say."""
    from vsa_dist.eval.cider import CiderD
    from vsa_dist.models.mrnn import caption_ids
    from vsa_dist.stages.train_mrnn import self_critical_loss

    torch.manual_seed(0)
    model = MRNN(MRNNArgs(vocab_size=14, feature_dim=8, hidden=48, word_dim=16, cell="lstm", dropout=0.0))
    features = torch.randn(4, 8)
    tokens = torch.tensor([[[2, 3, 4, 0], [2, 3, 4, 5]], [[6, 7, 0, 0], [6, 7, 8, 0]],
                           [[9, 10, 11, 0], [9, 10, 11, 0]], [[12, 2, 0, 0], [12, 2, 3, 0]]])
    reward = CiderD([[r for r in caption_ids(image, 13) if r] for image in tokens] + [[(5, 6)], [(8, 9, 10)]])
    references = [reward.references([r for r in caption_ids(image, 13) if r]) for image in tokens]

    def greedy_cider() -> list[float]:
        return [reward.score(c, refs) for c, refs in zip(caption_ids(model.greedy(features, 6), 13), references)]

    before = greedy_cider()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    rewards = []
    for _ in range(300):
        loss, mean_reward = self_critical_loss(model, features, tokens, reward, samples=5, end=13, max_len=6)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rewards.append(mean_reward)
    after = greedy_cider()
    assert sum(rewards[:10]) / 10 < 1.0 and sum(rewards[-10:]) / 10 > 3 * sum(rewards[:10]) / 10, rewards[::10]
    assert max(before) < 1.0 and min(after) > 2.0, (before, after)


# --------------------------------------------------------------------------------------------- metrics
def test_cider_reward_is_pycocoevalcaps_cider_given_the_same_corpus():
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    from vsa_dist.eval.cider import CiderD

    references = [["a dog runs on the grass", "the dog is running", "a brown dog runs"],
                  ["two men play football", "men playing football on a field"],
                  ["a child in a red shirt", "a little girl smiles", "a girl in red"],
                  ["a dog", "dog"]]
    candidates = ["a dog runs", "two men play a game of football on grass", "a girl a girl a girl in red", "dog"]
    scorer = CiderScorer(n=4, sigma=6.0)
    for candidate, refs in zip(candidates, references):
        scorer += (candidate, refs)
    _, expected = scorer.compute_score()
    ours = CiderD([[r.split() for r in refs] for refs in references])
    got = [ours.score(c.split(), ours.references([r.split() for r in refs])) for c, refs in zip(candidates, references)]
    assert got == pytest.approx(list(expected), abs=1e-9)
    assert got[1] > 0 and got[3] > got[0] > 0  # not all zero: the comparison bites
    # a larger corpus makes the shared n-grams rarer: every score changes
    wider = CiderD([[r.split() for r in refs] for refs in references] + [[["a", "cat"]]] * 5)
    assert wider.score(candidates[0].split(), wider.references([r.split() for r in references[0]])) != got[0]


def test_caption_metrics_match_hand_computation_and_pycocoevalcap():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    references = {"1": ["The dog barks.", "A dog is barking loudly"], "2": ["two men play football on grass"]}
    candidates = {"1": "the the the dog", "2": "two men play football on grass"}
    ours = caption_metrics(references, candidates)
    # BLEU-1 by hand, pooled over the corpus: clipped matches (the 1 + dog 1) + 6 = 8 of 4 + 6 = 10 words;
    # candidate length 10 against the closest reference lengths 3 + 6 = 9: no brevity penalty.
    assert ours["bleu1"] == pytest.approx(0.8, abs=1e-6)
    assert ours["bleu_length_ratio"] == pytest.approx(10 / 9)
    assert caption_metrics(references, {"1": "dog", "2": "two men"})["bleu_length_ratio"] == pytest.approx(3 / 9)
    # ROUGE-L of a candidate equal to its reference is 1; the other is LCS 2 ("the dog") of 4 and 3 words.
    precision, recall, beta = 2 / 4, 2 / 3, 1.2
    f_hand = (1 + beta ** 2) * precision * recall / (recall + beta ** 2 * precision)
    assert ours["rouge_l"] == pytest.approx((1 + f_hand) / 2, abs=1e-6)

    # The rest exactly as pycocoevalcap's own COCOEvalCap computes them.
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in references.items()})
    res = tokenizer.tokenize({k: [{"caption": v}] for k, v in candidates.items()})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert [ours[f"bleu{n}"] for n in range(1, 5)] == pytest.approx(bleu, abs=1e-9)
    assert ours["meteor"] == pytest.approx(Meteor().compute_score(gts, res)[0], abs=1e-9)
    assert ours["rouge_l"] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-9)
    assert ours["cider"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-9)


def test_missing_java_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="need Java"):
        caption_metrics({"1": ["a dog"]}, {"1": "a dog"})


# ------------------------------------------------------------------- a real run, registry, CLI and serving
def test_mrnn_training_registry_caption_and_serving(tmp_path, mini_features, mini_snippets, mini_images, ray_cluster,
                                                    mlflow_server, monkeypatch, capsys):
    """Trained on full images and on regions with their snippets (the paper's region generator), resumed,
    tested, registered; captions from the registry for whole images and regions, and over HTTP."""
    from mlflow.tracking import MlflowClient

    from vsa_dist.cli import main as vsa
    from tests.conftest import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    out = tmp_path / "mrnn"
    args = ["train-mrnn", "--features", str(mini_features), "--out", str(out), "--batch-size", "50",
            "--hidden", "128", "--word-dim", "128", "--beam-choices", "1,2", "--experiment", "test-mrnn",
            "--examples", "4", "--snippets", str(mini_snippets), "--progress", "false",
            "--register-as", "test-region-captioner"]  # its own name: other tests register vsa-captioner on this server
    first = vsa([*args, "--epochs", "2", "--test", "false"])
    second = vsa([*args, "--epochs", "3", "--resume", "true"])
    run_id = second["run_id"]
    assert first["run_id"] == run_id

    client = MlflowClient(mlflow_server)
    assert sorted(m.step for m in client.get_metric_history(run_id, "dev_cider")) == [1, 2, 3]
    assert sorted(m.step for m in client.get_metric_history(run_id, "dev_perplexity")) == [1, 2, 3]
    metrics = client.get_run(run_id).data.metrics
    assert {"test_bleu1", "test_bleu4", "test_meteor", "test_rouge_l", "test_cider"} <= set(metrics)
    assert all(0 <= metrics[f"test_{k}"] <= 1 for k in ("bleu1", "bleu4", "meteor", "rouge_l")), metrics
    perplexity = sorted(client.get_metric_history(run_id, "dev_perplexity"), key=lambda m: m.step)
    assert perplexity[-1].value < perplexity[0].value  # it learns (exact recall is the overfitting test's job)
    artifacts = {a.path for a in client.list_artifacts(run_id, "examples")}
    assert artifacts == {"examples/examples.json", "examples/examples.jpg"}
    # `vsa eval captions` on the saved best model, with the beam chosen on dev, gives the logged test numbers.
    evaluated = vsa(["eval", "captions", "--checkpoint", str(out / "best.pt"), "--features", str(mini_features)])
    assert evaluated["beam"] == second["beam"] and evaluated["images"] == 50
    assert {k: evaluated[k] for k in second["test"]} == pytest.approx(second["test"], abs=1e-9)
    # An ensemble of the model with itself is the model: the same distributions, the same captions.
    doubled = vsa(["eval", "captions", "--checkpoint", str(out / "best.pt"), "--ensemble", str(out / "best.pt"),
                   "--features", str(mini_features)])
    assert doubled["ensemble"] == [str(out / "best.pt")] * 2
    assert {k: doubled[k] for k in second["test"]} == pytest.approx(second["test"], abs=1e-9)
    champion = client.get_model_version_by_alias("test-region-captioner", "champion")
    assert champion.run_id == run_id and float(champion.tags["dev_cider"]) >= 0

    # Self-critical fine-tuning from that model (whole images only), through the same Ray Train loop.
    tuned = vsa(["train-mrnn", "--features", str(mini_features), "--out", str(tmp_path / "scst"), "--objective", "scst",
                 "--init", str(out / "best.pt"), "--hidden", "128", "--word-dim", "128", "--batch-size", "50",
                 "--epochs", "1", "--lr", "1e-4", "--beam-choices", "1", "--test", "false", "--register-as", "",
                 "--experiment", "test-mrnn", "--progress", "false"])
    history = client.get_metric_history(tuned["run_id"], "train_sample_cider")
    assert [m.step for m in history] == [1] and history[0].value > 0
    # it started from the trained model: its first dev CIDEr is near that model's, not an untrained one's (0)
    assert client.get_metric_history(tuned["run_id"], "dev_cider")[0].value > 0.5 * second["best_dev_cider_greedy"]

    # An LSTM attending over each image's whole frame and regions: trained by the same loop on every feature
    # row; `vsa eval captions` reads the rows back for it, alone and beside the whole-image model above.
    attending = vsa(["train-mrnn", "--features", str(mini_features), "--out", str(tmp_path / "attention"),
                     "--cell", "lstm", "--attention", "true", "--hidden", "64", "--word-dim", "64", "--batch-size", "50",
                     "--epochs", "1", "--beam-choices", "1", "--register-as", "", "--experiment", "test-mrnn",
                     "--progress", "false"])
    evaluated = vsa(["eval", "captions", "--checkpoint", str(tmp_path / "attention" / "best.pt"),
                     "--features", str(mini_features)])
    assert {k: evaluated[k] for k in attending["test"]} == pytest.approx(attending["test"], abs=1e-9)
    mixed = vsa(["eval", "captions", "--checkpoint", str(out / "best.pt"), "--ensemble",
                 str(tmp_path / "attention" / "best.pt"), "--features", str(mini_features)])
    assert mixed["images"] == 50 and 0 <= mixed["cider"]

    # vsa caption: a folder of images, through the registry on the server.
    folder = tmp_path / "images"
    folder.mkdir()
    for image in mini_images[:3]:
        (folder / image.name).write_bytes(image.read_bytes())
    capsys.readouterr()
    printed = vsa(["caption", str(folder), "--model", "models:/test-region-captioner@champion"])
    assert [p for p, _ in printed] == [str(folder / i.name) for i in mini_images[:3]]
    assert all(caption.split() for _, caption in printed)
    assert capsys.readouterr().out.count("\t") == 3
    # --regions: the two best regions of each image too, each with its box inside the image
    described = vsa(["caption", str(folder), "--model", "models:/test-region-captioner@champion", "--regions", "2"])
    lines = capsys.readouterr().out.strip().split("\n")
    assert len(described) == len(lines) == 9 and [p for p, _ in described[::3]] == [p for p, _ in printed]
    for line in lines[1:3] + lines[4:6]:
        _, box, region_caption = line.split("\t")
        x1, y1, x2, y2 = map(float, box.split(","))
        assert 0 <= x1 < x2 <= 224 and 0 <= y1 < y2 <= 224 and region_caption.split()

    # mlflow models serve: a base64 JPEG posted over HTTP gets the same caption back.
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/test-region-captioner@champion",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server,  # it execs uvicorn by name
                                   "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"},
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        body = json.dumps({"dataframe_split": {"columns": ["image"],
                                               "data": [[base64.b64encode(mini_images[0].read_bytes()).decode()]]}})
        deadline, answer = time.time() + 180, None
        while time.time() < deadline and answer is None:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body.encode(),
                                                 headers={"Content-Type": "application/json"})
                answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
            except urllib.error.HTTPError as err:
                raise AssertionError(f"the server answered {err.code}: {err.read()[:2000]!r}") from err
            except OSError:  # not listening yet
                assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(1)
        assert answer is not None, (tmp_path / "serve.log").read_text()[-3000:]
        predictions = answer["predictions"]
        caption = predictions["caption"][0] if isinstance(predictions, dict) else predictions[0]["caption"]
        assert caption == printed[0][1]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_champion_moves_only_to_a_better_model_on_the_same_dev_data(mlflow_server, capsys):
    from mlflow import MlflowClient

    from vsa_dist.serving import dev_data_id, move_alias_if_better

    client, name = MlflowClient(mlflow_server), "test-alias-rules"
    client.create_registered_model(name)
    dev = {"image_ids": ["a", "b"], "references": [["a dog runs"], ["a cat sits", "a cat"]]}
    same, other = dev_data_id(dev), dev_data_id({**dev, "references": [["a dog runs"], ["a cat sits"]]})
    assert same == dev_data_id({"image_ids": ("a", "b"), "references": [("a dog runs",), ("a cat sits", "a cat")]})
    assert same == dev_data_id({"image_ids": ["b", "a"], "references": [["a cat sits", "a cat"], ["a dog runs"]]})
    assert same != other
    run = client.create_run(client.create_experiment("test-alias-rules"))
    moves = []
    for cider, data in ((0.30, same), (0.20, same), (0.40, same), (0.90, other)):
        version = client.create_model_version(name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id).version
        client.set_model_version_tag(name, version, "dev_cider", str(cider))
        client.set_model_version_tag(name, version, "dev_data", data)
        moves.append(move_alias_if_better(client, name, "champion", version, cider, data))
    assert moves == [True, False, True, False]
    assert client.get_model_version_by_alias(name, "champion").version == "3"
    assert "was chosen on other dev data" in capsys.readouterr().out


def test_bad_generator_configs_stop_before_any_work(tmp_path, mini_features, capsys):
    from vsa_dist.cli import main as vsa

    cases = [
        (["train-mrnn", "--features", str(mini_features), "--cell", "gru"], "cell 'gru' is not one of"),
        (["train-mrnn", "--features", str(tmp_path / "nowhere")], "no manifest.json there"),
        (["train-mrnn", "--features", str(mini_features), "--beam-choices", "0,3"], "beam_choices"),
        (["train-mrnn", "--features", str(mini_features), "--label-smoothing", "1"], "label_smoothing 1.0 is outside its range [0, 1)"),
        (["train-mrnn", "--features", str(mini_features), "--objective", "scst"], "objective scst needs --init"),
        (["train-mrnn", "--features", str(mini_features), "--attention", "true"], "attention needs cell lstm"),
        (["train-mrnn", "--features", str(mini_features), "--objective", "scst", "--init", str(tmp_path / "x.pt")],
         "x.pt: no such checkpoint"),
        (["train-mrnn", "--features", str(mini_features), "--objective", "scst", "--init",
          str(mini_features / "manifest.json")], "manifest.json: not a torch checkpoint"),
        (["caption", str(tmp_path / "missing.jpg")], "missing.jpg: no such file or folder"),
        (["caption", str(tmp_path)], "no .jpg/.jpeg/.png images in this folder"),
        (["eval", "captions", "--checkpoint", str(tmp_path / "best.pt"), "--features", str(mini_features)],
         "no such file"),
        (["eval", "captions", "--checkpoint", str(mini_features / "manifest.json"), "--ensemble",
          str(tmp_path / "other.pt"), "--features", str(mini_features)], "ensemble checkpoint"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as stopped:
            vsa(argv)
        assert stopped.value.code == 2, argv
        assert message in capsys.readouterr().err, argv
