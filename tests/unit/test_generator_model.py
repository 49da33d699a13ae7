"""The generator against the paper's recurrence, exhaustive search and pycocoevalcap: no data set, no Ray."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from vsa_dist.eval.captions import caption_metrics, diversity, perplexity_of
from vsa_dist.models.args import MRNNArgs
from vsa_dist.models.decoding import (
    beam_search,
    caption_ids,
    continued_words,
    greedy,
    repeated_trigrams,
    unroll,
)
from vsa_dist.models.losses import distillation_loss, reward_references, self_critical_loss, token_nll
from vsa_dist.models.mrnn import MRNN, NEVER_GENERATED, MRNNEnsemble, teacher_forcing
from vsa_dist.models.tokens import PAD

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


@pytest.mark.parametrize("cell", ["rnn", "lstm", "lstm-att"])
def test_teacher_forcing_over_the_words_only_is_the_padded_forward_at_every_word(cell):
    """The packed forward (sentences sorted by length, the recurrence on the ones still running) gives the padded
    forward's logits at every non-PAD target, for sentences of several images out of order, and the same gradients."""
    model = tiny(cell, vocab=40)
    features = image_features(cell, 3)
    sentences = torch.tensor([[3, 4, 5, 6, 7], [9, 0, 0, 0, 0], [10, 11, 12, 0, 0], [13, 14, 0, 0, 0]])
    image_of = torch.tensor([2, 0, 2, 1])
    inputs, targets = teacher_forcing(sentences, model.args.end)
    padded = model(features, inputs, image_of=image_of)
    packed, packed_targets = model(features, inputs, image_of=image_of, targets=targets)
    assert len(packed) == len(packed_targets) == int((targets != PAD).sum()) == 6 + 2 + 4 + 3
    lengths, longest_first = [6, 2, 4, 3], [0, 2, 3, 1]  # step by step, the sentences still running
    at = [(n, t) for t in range(6) for n in longest_first if lengths[n] > t]
    torch.testing.assert_close(packed, torch.stack([padded[n, t] for n, t in at]))
    assert packed_targets.tolist() == [int(targets[n, t]) for n, t in at]
    padded_nll, count = token_nll(padded, targets)
    packed_nll, packed_count = token_nll(packed, packed_targets)
    assert packed_count == count
    torch.testing.assert_close(packed_nll, padded_nll)
    grads = torch.autograd.grad(padded_nll, list(model.parameters()), allow_unused=True)
    packed_grads = torch.autograd.grad(packed_nll, list(model.parameters()), allow_unused=True)
    largest = max(float(g.abs().max()) for g in grads if g is not None)
    for name, (g, h) in zip([n for n, _ in model.named_parameters()], zip(grads, packed_grads)):
        if g is not None:  # float32 sums in another order: equal to ~1e-6 of the largest gradient
            torch.testing.assert_close(h, g, rtol=1e-4, atol=1e-5 * largest, msg=name)


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
        weights = torch.softmax(
            torch.stack([model.attend(torch.tanh(k + model.query(h[0]))) for k in keys]).squeeze(-1), 0
        )
        x = model.embed.weight[w] + (b_v if t == 0 else 0)
        h, c = model.lstm(torch.cat([x, weights @ values])[None], (h, c))
        assert torch.allclose(logits[t], model.output(h[0]), atol=1e-5)
    # One vector per image is one row to attend to; without attention a model reads row 0 of the rows.
    assert torch.allclose(
        model(rows[:, 0], torch.tensor([[model.args.end]])), model(rows[:, :1], torch.tensor([[model.args.end]]))
    )
    plain = tiny("lstm")
    assert torch.equal(plain(rows, torch.tensor([[8, 3]])), plain(rows[:, 0], torch.tensor([[8, 3]])))
    with pytest.raises(ValueError, match="lstm"):
        MRNN(MRNNArgs(vocab_size=VOCAB, cell="rnn", attention=True))


@pytest.mark.parametrize("cell", ["rnn", "lstm-att"])
def test_sentences_share_their_images_rows_without_copies(cell):
    """``image_of`` (the image layers once per image, training's path) gives what one copy per sentence gives."""
    model, features = tiny(cell, vocab=40), torch.randn(3, 4, 6)
    image_of, inputs = torch.tensor([0, 0, 1, 2, 2, 2]), torch.randint(2, 40, (6, 5))
    assert torch.allclose(
        model(features, inputs, image_of=image_of), model(features[image_of], inputs), rtol=1e-5, atol=1e-4
    )


def image_features(cell: str, n: int) -> torch.Tensor:
    """Test images: one vector each, or for an attending model its whole image and three regions."""
    return torch.randn(n, 4, 6) if cell.endswith("-att") else torch.randn(n, 6)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "lstm-att"])
def test_beam_one_is_greedy(cell):
    model = tiny(cell, vocab=40)
    features = image_features(cell, 16)
    assert torch.equal(beam_search(model, features, beam=1, max_len=12), greedy(model, features, max_len=12))


def trigram_repeats(ids: list[int]) -> bool:
    trigrams = [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]
    return len(trigrams) != len(set(trigrams))


def test_repeated_trigrams_bans_exactly_the_words_that_would_repeat_one():
    g = torch.Generator().manual_seed(0)
    sequences = torch.randint(2, 6, (200, 7), generator=g)  # four words: many repeats
    banned = repeated_trigrams(sequences, 8)
    for row, seq in enumerate(sequences.tolist()):
        held = {tuple(seq[i:i + 3]) for i in range(len(seq) - 2)}
        assert banned[row].tolist() == [(seq[-2], seq[-1], word) in held for word in range(8)]
    assert banned.any() and not repeated_trigrams(sequences[:, :2], 8).any()


@pytest.mark.parametrize("cell", ["rnn", "lstm", "lstm-att"])
def test_decoding_never_repeats_a_trigram(cell):
    """A model whose output favours one word would say it again and again ("a a a a …", the demo's "in a red in a
    red"); greedy and beam search take the next best word instead, and still end."""
    model = tiny(cell, vocab=40)
    with torch.no_grad():
        model.output.bias[5] += 500.0  # word 5 wins every step
    features = image_features(cell, 8)
    looping = unroll(model, features, 12, lambda log_probs: log_probs.argmax(dim=-1))[0]
    assert all(trigram_repeats([w for w in row if w != PAD]) for row in looping.tolist())  # the test can fail
    best_word, beam = greedy(model, features, 12), beam_search(model, features, 3, 12)
    for row in best_word.tolist() + beam.tolist():
        assert not trigram_repeats([w for w in row if w != PAD]), row
    assert all(row.count(5) >= 2 for row in best_word.tolist())  # it still says its word, only not in a loop


def teach(model: MRNN, features: torch.Tensor, captions: torch.Tensor, steps: int) -> None:
    """Teacher-forced Adam steps on a few (image, caption) pairs until the model knows them; then eval mode."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        inputs, targets = teacher_forcing(captions, model.args.end)
        nll, count = token_nll(model(features, inputs), targets)
        optimizer.zero_grad()
        (nll / count).backward()
        optimizer.step()
    model.eval()


def test_continued_words_are_the_vocabulary_ids_of_words_a_caption_cannot_end_on():
    mask = continued_words(["man", "a", "dog", "in"], 7)  # ids: PAD, UNK, man, a, dog, in, END
    assert mask.tolist() == [False, False, False, True, False, True, True]  # END starts a caption: none is empty


@pytest.mark.parametrize("cell", ["rnn", "lstm-att"])
def test_decoding_never_ends_on_a_word_that_needs_a_continuation(cell):
    """A model taught to say "2 3 4" and stop ends on word 4; told that 4 is a word like "a" or "in" (the mask
    ``generate`` builds from CONTINUED_WORDS), greedy and beam search go on past it and end elsewhere, and a caption
    cut at the length limit is not cut after a 4 either."""
    torch.manual_seed(0)
    model = MRNN(MRNNArgs(vocab_size=10, feature_dim=8, hidden=32, word_dim=16, cell=cell.removesuffix("-att"),
                          dropout=0.0, attention=cell.endswith("-att")))
    features = torch.randn(3, 8) if not model.args.attention else torch.randn(3, 2, 8)
    captions = torch.tensor([[2, 3, 4], [5, 4, 0], [6, 7, 4]])
    teach(model, features, captions, steps=200)
    continued = torch.zeros(10, dtype=torch.bool)
    continued[[4, model.args.end]] = True

    def last_words(decoded):
        """Each caption's last word, whether it ended or was cut at the length limit (None: empty)."""
        captions = [[w for w in row if w not in (PAD, model.args.end)] for row in decoded.tolist()]
        return [words[-1] if words else None for words in captions]

    assert last_words(greedy(model, features, 12)) == [4, 4, 4]  # the test can fail: unmasked, it ends on 4
    for max_len in (12, 8, 4):  # 8 and 4: some captions are cut before they end, and must not be cut after a 4
        for decoded in (greedy(model, features, max_len, continued),
                        beam_search(model, features, 3, max_len, continued=continued)):
            ends = last_words(decoded)
            assert 4 not in ends and None not in ends, (max_len, decoded)  # not on 4, and none is empty
    assert all(model.args.end in row for row in greedy(model, features, 12, continued).tolist()[:2])  # still ends


def ensemble_of(cells: str) -> MRNNEnsemble:
    return MRNNEnsemble([tiny(cell, seed=3 + i) for i, cell in enumerate(cells.split("+"))])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "rnn+lstm", "lstm-att", "lstm-att+rnn"])
def test_wide_beam_is_exhaustive_search(cell):
    """With a beam wider than every prefix, beam search must return the most likely sentence of all
    (for an ensemble of an RNN and an LSTM: most likely under the mean of their log-probabilities)."""
    model, max_len = (tiny(cell, seed=3) if "+" not in cell else ensemble_of(cell)), 3
    words = [w for w in range(VOCAB) if w not in NEVER_GENERATED]
    features = image_features(cell.split("+")[0], 6)
    found = beam_search(model, features, beam=len(words) ** (max_len - 1), max_len=max_len)
    for image, row in zip(features, found):
        candidates = [list(seq) for n in range(1, max_len + 1) for seq in itertools.product(words, repeat=n)
                      if (seq[-1] == model.args.end or n == max_len) and model.args.end not in seq[:-1]]
        best = max(candidates, key=lambda seq: sequence_log_prob(model, image, seq))
        got = [w for w in row.tolist() if w != PAD]
        assert sequence_log_prob(model, image, got) == pytest.approx(sequence_log_prob(model, image, best), abs=1e-5)
        best_word = [w for w in greedy(model, image[None], max_len)[0].tolist() if w != PAD]
        assert sequence_log_prob(model, image, got) >= sequence_log_prob(model, image, best_word) - 1e-6


def test_ensemble_of_one_is_the_model_and_members_must_share_a_vocabulary():
    model, features = tiny("lstm", vocab=40), torch.randn(16, 6)
    alone = MRNNEnsemble([model])
    assert torch.equal(greedy(alone, features, 12), greedy(model, features, 12))
    assert torch.equal(beam_search(alone, features, 3, 12), beam_search(model, features, 3, 12))
    pair = ensemble_of("rnn+lstm")
    assert not torch.equal(greedy(pair, features, 12), greedy(pair.members[0], features, 12))
    assert torch.equal(beam_search(pair, features, 1, 12), greedy(pair, features, 12))
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
    teach(model, features, captions, steps=300)
    for decoded in (greedy(model, features, 8), beam_search(model, features, beam=3, max_len=8)):
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


@pytest.mark.parametrize("cell", ["lstm", "lstm-att"])  # (the tiny rnn's samples all run to the length limit)
def test_sampled_log_probs_are_the_models_and_carry_gradients(cell):
    """Sampling computes only the captions still running (their state shrinks as others end): every caption's
    log-probability is still its own under the model, whatever ended beside it."""
    model, features = tiny(cell, vocab=40), image_features(cell, 6)
    torch.manual_seed(1)
    ids, log_probs = model(features, sample_len=10)  # through forward, as DDP sees it
    assert log_probs.requires_grad
    assert len({int((row != PAD).sum()) for row in ids}) > 1  # captions of several lengths: some ended before others
    for i in range(len(features)):
        words = [w for w in ids[i].tolist() if w != PAD]
        assert words.count(model.args.end) <= 1 and not set(words) & set(NEVER_GENERATED)
        assert log_probs[i].sum().item() == pytest.approx(sequence_log_prob(model, features[i], words), abs=1e-4)
        assert torch.all(log_probs[i, len(words):] == 0)
    log_probs.sum().backward()
    assert model.output.weight.grad.abs().sum() > 0


def test_tempered_samples_come_from_the_sharpened_distribution():
    """scst's sample_temperature T: words drawn from p^(1/T) renormalised, with that distribution's log-probabilities
    (the policy the gradient is of); a cold temperature draws the most likely word at every step."""
    model, features = tiny("lstm", vocab=40), torch.randn(6, 6)
    torch.manual_seed(1)
    ids, log_probs = model(features, sample_len=10, temperature=0.5)
    for i in range(len(features)):
        words = [w for w in ids[i].tolist() if w != PAD]
        sharp = 2.0 * step_log_probs(model, features[i], words)
        sharp = sharp - torch.logsumexp(sharp, dim=-1, keepdim=True)
        assert log_probs[i].sum().item() == pytest.approx(float(sum(sharp[t, w] for t, w in enumerate(words))),
                                                          abs=1e-4)
    cold = model(features, sample_len=10, temperature=1e-4)[0]
    assert torch.equal(cold, unroll(model, features, 10, lambda lp: lp.argmax(dim=-1))[0])


def test_sampled_distributions_are_the_models_own_at_any_temperature():
    """What scst distils: at every sampled step the model's whole next-word distribution at temperature 1 (the one
    greedy and beam decode), however sharply the words were drawn; its drawn word's entry is the sampled log-prob."""
    model, features = tiny("lstm", vocab=40), torch.randn(6, 6)
    torch.manual_seed(1)
    ids, log_probs, distributions = model(features, sample_len=10, temperature=0.5, distributions=True)
    assert distributions.requires_grad and distributions.shape == (*ids.shape, 40)
    for i in range(len(features)):
        words = [w for w in ids[i].tolist() if w != PAD]
        torch.testing.assert_close(distributions[i, :len(words)].double(), step_log_probs(model, features[i], words),
                                   rtol=0, atol=1e-4)
        assert torch.all(distributions[i, len(words):] == 0)


def test_ensemble_teacher_forcing_is_its_step_by_step_distribution():
    pair, features = ensemble_of("lstm-att+rnn"), image_features("lstm-att", 3)
    words = [[2, 5, 3, 8], [4, 4, 2, 8], [6, 8, PAD, PAD]]
    inputs = torch.tensor([[pair.args.end] + row[:-1] for row in words])
    forced = pair._log_probs(pair(features, inputs))
    for i, row in enumerate(words):
        row = [w for w in row if w != PAD]
        expected = torch.stack([step_log_probs(m, features[i], row) for m in pair.members]).mean(dim=0)
        expected = expected - torch.logsumexp(expected, dim=-1, keepdim=True)
        torch.testing.assert_close(forced[i, :len(row)].double(), expected, rtol=0, atol=1e-4)


def test_distillation_pulls_the_student_to_the_teacher_where_the_student_goes():
    """The distillation term on a student's own samples: no pull when student and teacher are one model (the
    gradient is the difference of their distributions), and a few hundred steps of it alone bring another model's
    next-word distributions onto the teacher's along the teacher's own captions, where the student decodes."""

    torch.manual_seed(0)
    features = torch.randn(4, 6)
    teacher_model = tiny("lstm", seed=3, vocab=12)
    teacher = MRNNEnsemble([teacher_model])
    twin = tiny("lstm", seed=3, vocab=12)
    ids, _, distributions = twin(features.repeat_interleave(5, dim=0), sample_len=6, distributions=True)
    image_of = torch.arange(4).repeat_interleave(5)
    distillation_loss(distributions, teacher, features, ids, image_of, twin.args.end).backward()
    assert max(p.grad.abs().max() for p in twin.parameters()) < 1e-5

    end = teacher_model.args.end
    teacher_captions = [list(c) + [end] for c in caption_ids(greedy(teacher, features, 6), end)]

    def kl_on_teacher_captions(student: MRNN) -> float:  # mean KL(teacher || student) a step
        kls = []
        for feature, words in zip(features, teacher_captions):
            p, q = step_log_probs(teacher_model, feature, words), step_log_probs(student, feature, words)
            kls.append(float((p.exp() * (p - q)).nan_to_num().sum(dim=-1).mean()))
        return sum(kls) / len(kls)

    student = tiny("lstm", seed=8, vocab=12)
    before = kl_on_teacher_captions(student)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    for _ in range(300):
        ids, _, distributions = student(features.repeat_interleave(5, dim=0), sample_len=6, distributions=True)
        loss = distillation_loss(distributions, teacher, features, ids, image_of, student.args.end)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = kl_on_teacher_captions(student)
    # ~100-200x over seeds of the images. Not greedy captions equal to the teacher's: this teacher's top two words
    # are often within a few percent, and at such a near-tie a student this close can still choose the other
    assert before > 0.3 and after < before / 20, (before, after)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_self_critical_training_raises_the_cider_of_samples(temperature):
    """A tiny model sampling captions for four images learns, from CIDEr-D rewards alone (no teacher
    forcing), to say what each image's references say, whether it samples from its distribution or a sharpened one."""
    from vsa_dist.eval.cider import CiderD

    torch.manual_seed(0)
    model = MRNN(MRNNArgs(vocab_size=14, feature_dim=8, hidden=48, word_dim=16, cell="lstm", dropout=0.0))
    features = torch.randn(4, 8)
    tokens = torch.tensor([[[2, 3, 4, 0], [2, 3, 4, 5]], [[6, 7, 0, 0], [6, 7, 8, 0]],
                           [[9, 10, 11, 0], [9, 10, 11, 0]], [[12, 2, 0, 0], [12, 2, 3, 0]]])
    reward = CiderD([[r for r in caption_ids(image, 13) if r] for image in tokens] + [[(5, 6)], [(8, 9, 10)]])
    references = reward_references(reward, tokens, 13)

    def greedy_cider() -> list[float]:
        return [reward.score(c, refs) for c, refs in zip(caption_ids(greedy(model, features, 6), 13), references)]

    before = greedy_cider()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    rewards = []
    for _ in range(300):
        loss, logged = self_critical_loss(model, features, tokens, reward, samples=5, end=13, max_len=6,
                                          temperature=temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rewards.append(logged["reward"])
    after = greedy_cider()
    assert sum(rewards[:10]) / 10 < 1.0 and sum(rewards[-10:]) / 10 > 3 * sum(rewards[:10]) / 10, rewards[::10]
    assert max(before) < 1.0 and min(after) > 2.0, (before, after)


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


def test_missing_java_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="need Java"):
        caption_metrics({"1": ["a dog"]}, {"1": "a dog"})


def test_perplexity_of_a_diverged_model_is_inf_not_an_error():
    assert perplexity_of(10 * math.log(7.0), 10) == pytest.approx(7.0)
    assert perplexity_of(0.0, 0) == 1.0  # no words: nothing to be perplexed by
    assert perplexity_of(1e6, 10) == math.inf  # exp(1e5) overflows a float: the run goes on and logs inf


def test_diversity_counts_distinct_captions_and_the_words_in_use():
    looping = ["a man in a red shirt"] * 3 + ["a man in a red in a red"]
    assert diversity(looping) == {"distinct_captions": 2, "distinct_words": 5}  # a man in red shirt
    assert diversity(["two dogs play", "a girl swings"]) == {"distinct_captions": 2, "distinct_words": 6}
