"""Decoding the generator (models/mrnn.py, or an ensemble of them): greedy, beam search and sampling, and the rules
every decoder keeps. Each reads a model through its step interface alone: ``start`` (the image's bias and the first
state), ``step`` (one word in, next-word logits out), ``_log_probs`` (the distribution it generates from).

Decoding (greedy and beam search) never repeats a word trigram: a word that would complete a trigram the caption
already holds is not a candidate (after "a man in a red shirt in a", "red" is not: another word follows), the
usual trigram blocking of captioning and summarisation decoders. Nor does it end a caption on a word that needs a
continuation (``CONTINUED_WORDS``: "a man in a", "a dog and a"): after one of them END is not a candidate, nor is one
of them at the last step, where the caption is cut; nor is END at the first (no caption is empty).
Sampling (self-critical training) is left as the model's distribution.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vsa_dist.models.tokens import CONTINUED_WORDS, PAD, UNK


def repeated_trigrams(sequences: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[N, V] True where word w after the prefix ``sequences`` [N, t] would repeat a trigram of that prefix: the
    prefix ends in (a, b) and (a, b, w) occurs in it already."""
    banned = torch.zeros(len(sequences), vocab_size, dtype=torch.bool, device=sequences.device)
    t = sequences.shape[1]
    if t < 3:
        return banned
    last = sequences[:, t - 2:]
    for i in range(t - 2):
        match = (sequences[:, i:i + 2] == last).all(dim=1)
        rows = match.nonzero().squeeze(1)
        banned[rows, sequences[rows, i + 2]] = True
    return banned


def continued_words(vocab: list[str], vocab_size: int) -> torch.Tensor:
    """[V] True at the ids of the vocabulary's words that a caption cannot end on (word id w is vocab[w - 2]), and
    at END, which also starts every caption: no caption is empty."""
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[[w + 2 for w, word in enumerate(vocab) if word in CONTINUED_WORDS]] = True
    mask[vocab_size - 1] = True
    return mask


def no_dangling_end(log_probs: torch.Tensor, previous: torch.Tensor, continued: torch.Tensor | None, end: int,
                    last_step: bool) -> torch.Tensor:
    """``log_probs`` [N, V] with END ruled out in the rows whose previous word [N] is in ``continued`` [V]; at the
    last step (the caption is cut after it) the words of ``continued`` are ruled out too."""
    if continued is None:
        return log_probs
    continued = continued.to(previous.device)
    banned = torch.zeros_like(log_probs, dtype=torch.bool)
    banned[:, end] = continued[previous]
    if last_step:
        banned[:, :end] |= continued[:end]
    return log_probs.masked_fill(banned, float("-inf"))


def caption_ids(ids: torch.Tensor, end: int) -> list[tuple[int, ...]]:
    """Decoded or sampled ids [N, L] → word-id tuples up to END."""
    captions = []
    for row in ids.tolist():
        words = []
        for w in row:
            if w == end or w == PAD:
                break
            words.append(w)
        captions.append(tuple(words))
    return captions


def ids_to_words(ids: torch.Tensor, vocab: list[str], end: int) -> list[list[str]]:
    """Decoded ids [N, L] → words, up to END (word id w is vocab[w - 2])."""
    return [[vocab[w - 2] if w > UNK else "<unk>" for w in caption] for caption in caption_ids(ids, end)]


def unroll(model: nn.Module, features: torch.Tensor, max_len: int, choose: Callable[[torch.Tensor], torch.Tensor],
           block_trigrams: bool = False, continued: torch.Tensor | None = None, temperature: float = 1.0,
           distributions: bool = False) -> tuple[torch.Tensor, ...]:
    """One caption per row, word by word: ``choose`` picks each step's words [N] from the next-word
    log-probabilities [N, V] (with ``block_trigrams``, none that would repeat a trigram; with ``continued``, no
    END after those words, and none of them last: ``no_dangling_end``). (ids [N, L], END then PAD after a
    sentence ends; the log-probability of each chosen word [N, L], 0 after the end; with ``distributions``
    also every step's whole next-word log-distribution [N, L, V], at temperature 1, 0 after the end.)"""
    n, device = len(features), features.device
    bias, state = model.start(features)
    words = torch.full((n,), model.args.end, dtype=torch.long, device=device)
    # The rows still running; the state holds theirs only: a caption that has ended costs nothing more (a batch
    # of samples runs to its longest caption, ~60% longer than its mean one).
    running = torch.arange(n, device=device)
    ids, log_probs, steps = [], [], []

    def per_row(values: torch.Tensor) -> torch.Tensor:  # the running rows' values at their rows, 0 elsewhere
        return values.new_zeros((n, *values.shape[1:])).index_copy(0, running, values)

    for t in range(max_len):
        logits, state = model.step(words[running], state, bias if t == 0 else None)
        step_log_probs = model._log_probs(logits, temperature)
        if distributions:  # the model's own distribution, whatever temperature the words are drawn at
            steps.append(per_row(step_log_probs if temperature == 1.0 else model._log_probs(logits)))
        candidates = step_log_probs.detach()
        if block_trigrams and ids:
            candidates = candidates.masked_fill(
                repeated_trigrams(torch.stack(ids, dim=1)[running], logits.shape[-1]), float("-inf"))
        candidates = no_dangling_end(candidates, words[running], continued, model.args.end, t == max_len - 1)
        chosen = choose(candidates)
        words = torch.full_like(words, PAD).index_copy(0, running, chosen)
        log_probs.append(per_row(step_log_probs.gather(1, chosen[:, None]).squeeze(1)))
        ids.append(words)
        going = chosen != model.args.end
        if not going.any():
            break
        if not going.all():
            running, state = running[going], tuple(s[going] for s in state)
    chosen_ids = (torch.stack(ids, dim=1), torch.stack(log_probs, dim=1))
    return (*chosen_ids, torch.stack(steps, dim=1)) if distributions else chosen_ids


def sample(model: nn.Module, features: torch.Tensor, max_len: int = 20, temperature: float = 1.0,
           distributions: bool = False) -> tuple[torch.Tensor, ...]:
    """One caption per row drawn from the model (PAD and UNK excluded), with gradients: (ids [N, L], END
    then PAD after a sentence ends; the log-probability of each drawn word [N, L], 0 after the end; with
    ``distributions``, every step's next-word log-distribution [N, L, V], untempered, 0 after the end). With
    ``temperature`` < 1 the words are drawn from the sharpened distribution, and the log-probabilities are that
    distribution's (what a policy gradient through them needs)."""
    return unroll(model, features, max_len, lambda log_probs: torch.multinomial(log_probs.exp(), 1).squeeze(1),
                  temperature=temperature, distributions=distributions)


@torch.no_grad()
def greedy(model: nn.Module, features: torch.Tensor, max_len: int = 20,
           continued: torch.Tensor | None = None) -> torch.Tensor:
    """The most likely word at every step that repeats no trigram (and, with ``continued`` [V], leaves no caption
    ending on one of those words: ``no_dangling_end``): ids [N, L], END then PAD after a sentence ends."""
    return unroll(model, features, max_len, lambda log_probs: log_probs.argmax(dim=-1), block_trigrams=True,
                  continued=continued)[0]


@torch.no_grad()
def beam_search(model: nn.Module, features: torch.Tensor, beam: int = 3, max_len: int = 20,
                length_penalty: float = 0.0, continued: torch.Tensor | None = None) -> torch.Tensor:
    """Batched beam search: every image's ``beam`` best prefixes advance together, one step at a time.

    A finished hypothesis stays in its beam with its score, continued by PAD at no cost, so finished
    and open hypotheses compete on the same list. The winner maximises log P / length**length_penalty
    (0: plain log-probability, the paper's choice). Beam 1 is greedy decoding, exactly. No hypothesis
    repeats a word trigram (``repeated_trigrams``), nor ends on a word of ``continued`` [V] (``no_dangling_end``).
    """
    n, k, device = len(features), beam, features.device
    vocab = model.args.vocab_size
    bias, state = model.start(features, k)
    words = torch.full((n * k,), model.args.end, dtype=torch.long, device=device)
    scores = torch.full((n, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: only one may expand at first
    done = torch.zeros(n, k, dtype=torch.bool, device=device)
    sequences = torch.zeros(n, k, 0, dtype=torch.long, device=device)
    finished_row = torch.full((vocab,), float("-inf"), device=device)
    finished_row[PAD] = 0.0
    for t in range(max_len):
        logits, state = model.step(words, state, bias if t == 0 else None)
        log_probs = model._log_probs(logits)
        if t >= 3:
            log_probs = log_probs.masked_fill(repeated_trigrams(sequences.view(n * k, t), vocab), float("-inf"))
        log_probs = no_dangling_end(log_probs, words, continued, model.args.end, t == max_len - 1)
        log_probs = torch.where(done[..., None], finished_row, log_probs.view(n, k, vocab))
        best, flat = (scores[..., None] + log_probs).view(n, k * vocab).topk(k, dim=1)
        source, token = flat // vocab, flat % vocab
        scores = best
        sequences = torch.cat([sequences.gather(1, source[..., None].expand(-1, -1, t)), token[..., None]], dim=2)
        done = done.gather(1, source) | (token == model.args.end)
        rows = (source + torch.arange(n, device=device)[:, None] * k).view(-1)
        state = tuple(s[rows] for s in state)
        words = token.view(-1)
        if done.all():
            break
    if length_penalty:
        lengths = (sequences != PAD).sum(dim=2).clamp(min=1).float()
        scores = scores / lengths ** length_penalty
    winner = scores.argmax(dim=1)
    return sequences[torch.arange(n, device=device), winner]


@torch.no_grad()
def generate(model: nn.Module, features: torch.Tensor, vocab: list[str], beam: int, max_len: int,
             length_penalty: float = 0.0, chunk: int = 250) -> list[str]:
    """Captions for images [N, D] or [N, M, D] (whole image, regions); beam 1 is greedy. None ends on a word that
    needs a continuation (``CONTINUED_WORDS``)."""
    model.eval()
    continued = continued_words(vocab, model.args.vocab_size).to(features.device)
    captions = []
    for start in range(0, len(features), chunk):
        part = features[start:start + chunk]
        ids = (greedy(model, part, max_len, continued) if beam == 1
               else beam_search(model, part, beam, max_len, length_penalty, continued))
        captions += [" ".join(words) for words in ids_to_words(ids, vocab, model.args.end)]
    return captions
