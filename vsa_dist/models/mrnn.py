"""The multimodal RNN generator of section 3.2 (torch only): an image feature conditions a word RNN.

    b_v = W_hi f(image)
    h_t = ReLU(W_hx x_t + W_hh h_{t-1} + b_h + [t = 1] b_v)
    y_t = softmax(W_oh h_t + b_o)

Word ids: PAD = 0, UNK = 1, the vocabulary from 2 on, and END last. END also starts every sentence
(x_1 = START), as in the paper's code, so the model learns one "boundary" token. ``cell="lstm"`` swaps
the ReLU recurrence for an LSTM cell (beyond the paper); the image then enters as a bias on x_1.

Image features come as [N, D] (one vector per image) or [N, M, D] (row 0 the whole image, rows 1.. its
regions, as the feature shards store them); the paper's model reads row 0 only. ``attention=True`` (lstm
only, beyond the paper; Xu et al. 2015's soft attention) also reads the regions: before every step the
previous hidden state weighs the M rows, and their weighted mean enters the LSTM beside the word vector.

Decoding (greedy and beam search) never repeats a word trigram: a word that would complete a trigram the caption
already holds is not a candidate (after "a man in a red shirt in a", "red" is not: another word follows), the
usual trigram blocking of captioning and summarisation decoders. Nor does it end a caption on a word that needs a
continuation (``CONTINUED_WORDS``: "a man in a", "a dog and a"): after one of them END is not a candidate, nor is one
of them at the last step, where the caption is cut; nor is END at the first (no caption is empty).
Sampling (self-critical training) is left as the model's distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vsa_dist.models.tokens import CONTINUED_WORDS, PAD, UNK

NEVER_GENERATED = (PAD, UNK)


@dataclass
class MRNNArgs:
    vocab_size: int               # PAD, UNK, words, END
    feature_dim: int = 1280
    hidden: int = 512
    word_dim: int = 512
    cell: str = "rnn"             # rnn (the paper) or lstm
    dropout: float = 0.5          # on the non-recurrent layers: word vectors, image vector, output layer input
    feature_norm: str = "rms"     # CNN features at unit length ("unit"), or at unit length x sqrt(D) ("rms": each
    #                               component ~1, the scale a Linear layer's default init expects; lower dev perplexity)
    attention: bool = False       # lstm: attend over the whole image and its regions at every step

    @property
    def state_size(self) -> int:
        """Tensors in the recurrent state: h (rnn); h, c (lstm); plus the attention memory's keys and values."""
        return (1 if self.cell == "rnn" else 2) + (2 if self.attention else 0)

    @property
    def end(self) -> int:
        return self.vocab_size - 1


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


def teacher_forcing(tokens: torch.Tensor, end: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PAD-padded sentences [N, T] → (inputs, targets) [N, T+1]: START w_1..w_n and w_1..w_n END."""
    n = len(tokens)
    lengths = (tokens != PAD).sum(dim=1)
    inputs = torch.cat([torch.full((n, 1), end, dtype=tokens.dtype, device=tokens.device), tokens], dim=1)
    targets = torch.cat([tokens, torch.full((n, 1), PAD, dtype=tokens.dtype, device=tokens.device)], dim=1)
    targets[torch.arange(n, device=tokens.device), lengths] = end
    return inputs, targets


def token_nll(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over the non-PAD targets, and their count (mean = / count; perplexity = exp).

    ``label_smoothing`` ε: the target is 1 − ε on the reference word plus ε spread over the vocabulary
    (a training loss only: perplexity is measured with ε = 0)."""
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=PAD,
                          reduction="sum", label_smoothing=label_smoothing)
    return nll, (targets != PAD).sum()


class MRNN(nn.Module):
    def __init__(self, args: MRNNArgs):
        super().__init__()
        if args.cell not in ("rnn", "lstm"):
            raise ValueError(f"cell {args.cell!r} is not rnn or lstm")
        if args.feature_norm not in ("unit", "rms"):
            raise ValueError(f"feature_norm {args.feature_norm!r} is not unit or rms")
        if args.attention and args.cell != "lstm":
            raise ValueError("attention needs cell lstm")
        self.args = args
        self.embed = nn.Embedding(args.vocab_size, args.word_dim, padding_idx=PAD)
        self.drop = nn.Dropout(args.dropout)
        if args.cell == "rnn":
            self.image = nn.Linear(args.feature_dim, args.hidden)          # W_hi: b_v lives in the hidden space
            self.input = nn.Linear(args.word_dim, args.hidden)             # W_hx, b_h
            self.recurrent = nn.Linear(args.hidden, args.hidden, bias=False)  # W_hh
        else:
            self.image = nn.Linear(args.feature_dim, args.word_dim)        # added to x_1
            context = args.word_dim if args.attention else 0
            self.lstm = nn.LSTMCell(args.word_dim + context, args.hidden)
        if args.attention:
            self.keys = nn.Linear(args.feature_dim, args.hidden)            # what each row offers the query
            self.values = nn.Linear(args.feature_dim, args.word_dim)        # what a chosen row adds to the input
            self.query = nn.Linear(args.hidden, args.hidden, bias=False)   # what h_{t-1} asks for
            self.attend = nn.Linear(args.hidden, 1)                        # w in w·tanh(key + query)
        self.output = nn.Linear(args.hidden, args.vocab_size)              # W_oh, b_o

    def _normalise(self, features: torch.Tensor) -> torch.Tensor:
        features = F.normalize(features.float(), dim=-1)
        return features * features.shape[-1] ** 0.5 if self.args.feature_norm == "rms" else features

    def image_bias(self, features: torch.Tensor) -> torch.Tensor:
        """Image features [N, D] or [N, M, D] (row 0 the whole image) → b_v, from the whole image."""
        return self.drop(self.image(self._normalise(features[:, 0] if features.dim() == 3 else features)))

    def initial_state(self, n: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        zeros = torch.zeros(n, self.args.hidden, device=device)
        return (zeros,) if self.args.cell == "rnn" else (zeros, zeros.clone())

    def start(self, features: torch.Tensor, copies: int = 1,
              image_of: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Image features [B, D] or [B, M, D] → (b_v, the state before the first word) for each sentence:
        sentence n reads image ``image_of[n]`` (default: one sentence per image), and each is repeated
        ``copies`` times (a beam's hypotheses). The image layers run once per image, not per sentence. With
        attention the state carries the rows' keys and values: they ride along unchanged, so a beam's
        reordering moves them with their hypotheses."""
        def per_sentence(x: torch.Tensor) -> torch.Tensor:
            return (x if image_of is None else x[image_of]).repeat_interleave(copies, dim=0)

        bias = per_sentence(self.image_bias(features))
        state = self.initial_state(len(bias), bias.device)
        if self.args.attention:
            rows = self._normalise(features if features.dim() == 3 else features[:, None])
            state += (per_sentence(self.keys(rows)), per_sentence(self.drop(self.values(rows))))
        return bias, state

    def _recur(self, x: torch.Tensor, state: tuple[torch.Tensor, ...],
               first_bias: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """One recurrence step from the step's input: W_hx x_t + b_h (rnn) or the word vector x_t (lstm)."""
        if self.args.cell == "rnn":
            pre = x + self.recurrent(state[0])
            if first_bias is not None:
                pre = pre + first_bias
            return (torch.relu(pre),)
        if first_bias is not None:
            x = x + first_bias
        if not self.args.attention:
            return self.lstm(x, state)
        h, c, keys, values = state
        weights = self.attend(torch.tanh(keys + self.query(h)[:, None])).squeeze(-1).softmax(dim=-1)  # [N, M]
        context = torch.einsum("nm,nme->ne", weights, values)
        return (*self.lstm(torch.cat([x, context], dim=-1), (h, c)), keys, values)

    def _step_input(self, words: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.embed(words))
        return self.input(x) if self.args.cell == "rnn" else x

    def step(self, words: torch.Tensor, state: tuple[torch.Tensor, ...],
             first_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """One time step for a batch of word ids [N]: (logits [N, V], new state). ``first_bias`` at t = 1."""
        state = self._recur(self._step_input(words), state, first_bias)
        return self.output(self.drop(state[0])), state

    def forward(self, features: torch.Tensor, inputs: torch.Tensor | None = None, sample_len: int = 0,
                image_of: torch.Tensor | None = None, temperature: float = 1.0,
                distributions: bool = False,
                targets: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Teacher forcing: features [N, D] or [N, M, D], input ids [N, T] → logits [N, T, V]; with
        ``image_of`` [N], features are per image ([B, ...]) and sentence n is of image image_of[n].

        The same arithmetic as ``step`` at every t, but the input and output layers run once over all time
        steps (two large matrix products instead of 2T small ones); only the recurrence loops.

        With ``targets`` [N, T] (``teacher_forcing``'s): (logits [K, V], targets [K]) at the K targets that are not
        PAD only, the same numbers as the padded logits there (``_packed``): the cost follows the words, not N x T.

        Without ``inputs``: ``sample(features, sample_len, temperature, distributions)``. Sampling goes through
        ``forward`` so that a DistributedDataParallel wrapper sees it and averages the gradients of self-critical
        training.
        """
        if inputs is None:
            return self.sample(features, sample_len, temperature, distributions)
        if targets is not None:
            return self._packed(features, inputs, targets, image_of)
        bias, state = self.start(features, image_of=image_of)
        step_inputs = self._step_input(inputs)                            # [N, T, H or E]
        hidden = []
        for t in range(inputs.shape[1]):
            state = self._recur(step_inputs[:, t], state, bias if t == 0 else None)
            hidden.append(state[0])
        return self.output(self.drop(torch.stack(hidden, dim=1)))

    def _packed(self, features: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor,
                image_of: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing over the words only: sentences sorted longest first, so the ones still running at step t are
        a prefix of the batch and the recurrence runs on that prefix (the state only shrinks: a slice, no copy).
        Training sentences are cut at 20 words, so a batch of 100 usually runs 21 steps while its mean sentence has
        12: the padded forward spends ~44% of the recurrence and of the vocabulary-wide output layer on PAD
        (benchmarks/mrnn_step.py). Returns (logits [K, V], targets [K]) for the K non-PAD targets, in (step, sorted
        sentence) order: per-word losses and their sum are those of the padded forward, whose dropout draws it does
        not reproduce."""
        lengths = (targets != PAD).sum(dim=1)
        order = lengths.argsort(descending=True)
        lengths, inputs, targets = lengths[order], inputs[order], targets[order]
        image_of = order if image_of is None else image_of[order]
        bias, state = self.start(features, image_of=image_of)
        step_inputs = self._step_input(inputs)
        running = (lengths[None, :] > torch.arange(inputs.shape[1], device=inputs.device)[:, None]).sum(dim=1).tolist()
        hidden, packed_targets = [], []
        for t, n in enumerate(running):
            if n == 0:
                break
            state = self._recur(step_inputs[:n, t], tuple(s[:n] for s in state), bias[:n] if t == 0 else None)
            hidden.append(state[0])
            packed_targets.append(targets[:n, t])
        return self.output(self.drop(torch.cat(hidden))), torch.cat(packed_targets)

    def _log_probs(self, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """The next-word distribution given that PAD and UNK are never generated (renormalised without them);
        ``temperature`` < 1 sharpens it (softmax of logits / temperature)."""
        logits = logits.float().clone()
        logits[..., list(NEVER_GENERATED)] = float("-inf")
        return F.log_softmax(logits / temperature if temperature != 1.0 else logits, dim=-1)

    def _unroll(self, features: torch.Tensor, max_len: int, choose, block_trigrams: bool = False,
                continued: torch.Tensor | None = None, temperature: float = 1.0,
                distributions: bool = False) -> tuple[torch.Tensor, ...]:
        """One caption per row, word by word: ``choose`` picks each step's words [N] from the next-word
        log-probabilities [N, V] (with ``block_trigrams``, none that would repeat a trigram; with ``continued``, no
        END after those words, and none of them last: ``no_dangling_end``). (ids [N, L], END then PAD after a
        sentence ends; the log-probability of each chosen word [N, L], 0 after the end; with ``distributions``
        also every step's whole next-word log-distribution [N, L, V], at temperature 1, 0 after the end.)"""
        n, device = len(features), features.device
        bias, state = self.start(features)
        words = torch.full((n,), self.args.end, dtype=torch.long, device=device)
        # The rows still running; the state holds theirs only: a caption that has ended costs nothing more (a batch
        # of samples runs to its longest caption, ~60% longer than its mean one).
        running = torch.arange(n, device=device)
        ids, log_probs, steps = [], [], []

        def per_row(values: torch.Tensor) -> torch.Tensor:  # the running rows' values at their rows, 0 elsewhere
            return values.new_zeros((n, *values.shape[1:])).index_copy(0, running, values)

        for t in range(max_len):
            logits, state = self.step(words[running], state, bias if t == 0 else None)
            step_log_probs = self._log_probs(logits, temperature)
            if distributions:  # the model's own distribution, whatever temperature the words are drawn at
                steps.append(per_row(step_log_probs if temperature == 1.0 else self._log_probs(logits)))
            candidates = step_log_probs.detach()
            if block_trigrams and ids:
                candidates = candidates.masked_fill(
                    repeated_trigrams(torch.stack(ids, dim=1)[running], logits.shape[-1]), float("-inf"))
            candidates = no_dangling_end(candidates, words[running], continued, self.args.end, t == max_len - 1)
            chosen = choose(candidates)
            words = torch.full_like(words, PAD).index_copy(0, running, chosen)
            log_probs.append(per_row(step_log_probs.gather(1, chosen[:, None]).squeeze(1)))
            ids.append(words)
            going = chosen != self.args.end
            if not going.any():
                break
            if not going.all():
                running, state = running[going], tuple(s[going] for s in state)
        chosen_ids = (torch.stack(ids, dim=1), torch.stack(log_probs, dim=1))
        return (*chosen_ids, torch.stack(steps, dim=1)) if distributions else chosen_ids

    def sample(self, features: torch.Tensor, max_len: int = 20, temperature: float = 1.0,
               distributions: bool = False) -> tuple[torch.Tensor, ...]:
        """One caption per row drawn from the model (PAD and UNK excluded), with gradients: (ids [N, L], END
        then PAD after a sentence ends; the log-probability of each drawn word [N, L], 0 after the end; with
        ``distributions``, every step's next-word log-distribution [N, L, V], untempered, 0 after the end). With
        ``temperature`` < 1 the words are drawn from the sharpened distribution, and the log-probabilities are that
        distribution's (what a policy gradient through them needs)."""
        return self._unroll(features, max_len, lambda log_probs: torch.multinomial(log_probs.exp(), 1).squeeze(1),
                            temperature=temperature, distributions=distributions)

    @torch.no_grad()
    def greedy(self, features: torch.Tensor, max_len: int = 20, continued: torch.Tensor | None = None) -> torch.Tensor:
        """The most likely word at every step that repeats no trigram (and, with ``continued`` [V], leaves no caption
        ending on one of those words: ``no_dangling_end``): ids [N, L], END then PAD after a sentence ends."""
        return self._unroll(features, max_len, lambda log_probs: log_probs.argmax(dim=-1), block_trigrams=True,
                            continued=continued)[0]

    @torch.no_grad()
    def beam_search(self, features: torch.Tensor, beam: int = 3, max_len: int = 20,
                    length_penalty: float = 0.0, continued: torch.Tensor | None = None) -> torch.Tensor:
        """Batched beam search: every image's ``beam`` best prefixes advance together, one step at a time.

        A finished hypothesis stays in its beam with its score, continued by PAD at no cost, so finished
        and open hypotheses compete on the same list. The winner maximises log P / length**length_penalty
        (0: plain log-probability, the paper's choice). Beam 1 is greedy decoding, exactly. No hypothesis
        repeats a word trigram (``repeated_trigrams``), nor ends on a word of ``continued`` [V] (``no_dangling_end``).
        """
        n, k, device = len(features), beam, features.device
        vocab = self.args.vocab_size
        bias, state = self.start(features, k)
        words = torch.full((n * k,), self.args.end, dtype=torch.long, device=device)
        scores = torch.full((n, k), float("-inf"), device=device)
        scores[:, 0] = 0.0  # all beams start identical: only one may expand at first
        done = torch.zeros(n, k, dtype=torch.bool, device=device)
        sequences = torch.zeros(n, k, 0, dtype=torch.long, device=device)
        finished_row = torch.full((vocab,), float("-inf"), device=device)
        finished_row[PAD] = 0.0
        for t in range(max_len):
            logits, state = self.step(words, state, bias if t == 0 else None)
            log_probs = self._log_probs(logits)
            if t >= 3:
                log_probs = log_probs.masked_fill(repeated_trigrams(sequences.view(n * k, t), vocab), float("-inf"))
            log_probs = no_dangling_end(log_probs, words, continued, self.args.end, t == max_len - 1)
            log_probs = torch.where(done[..., None], finished_row, log_probs.view(n, k, vocab))
            best, flat = (scores[..., None] + log_probs).view(n, k * vocab).topk(k, dim=1)
            source, token = flat // vocab, flat % vocab
            scores = best
            sequences = torch.cat([sequences.gather(1, source[..., None].expand(-1, -1, t)), token[..., None]], dim=2)
            done = done.gather(1, source) | (token == self.args.end)
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


class MRNNEnsemble(nn.Module):
    """Several generators over one vocabulary decoding as one: each step's next-word distribution is the
    renormalised geometric mean of theirs (their log-probabilities averaged). Beyond the paper.

    It has the step interface ``MRNN.greedy`` and ``MRNN.beam_search`` use (``start``, ``step``,
    ``_log_probs``), so both decode it unchanged: the members' image biases and states travel side by side
    as one tensor / one tuple, and are split again at every step.
    """

    def __init__(self, members: list[MRNN]):
        super().__init__()
        if len({m.args.vocab_size for m in members}) != 1:
            raise ValueError("ensemble members must share one vocabulary")
        self.members = nn.ModuleList(members)
        self.args = members[0].args
        self._bias_widths = [m.image.out_features for m in members]
        self._state_counts = [m.args.state_size for m in members]

    def start(self, features: torch.Tensor, copies: int = 1) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        starts = [m.start(features, copies) for m in self.members]
        return torch.cat([bias for bias, _ in starts], dim=-1), tuple(s for _, state in starts for s in state)

    def step(self, words: torch.Tensor, state: tuple[torch.Tensor, ...],
             first_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(mean of the members' log-probabilities [N, V] as the step's logits, the members' new states)."""
        biases = first_bias.split(self._bias_widths, dim=-1) if first_bias is not None else [None] * len(self.members)
        log_probs, new_state, at = [], [], 0
        for member, bias, count in zip(self.members, biases, self._state_counts):
            logits, member_state = member.step(words, state[at:at + count], bias)
            log_probs.append(member._log_probs(logits))
            new_state += member_state
            at += count
        return torch.stack(log_probs).mean(dim=0), tuple(new_state)

    def forward(self, features: torch.Tensor, inputs: torch.Tensor,
                image_of: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing, as ``MRNN.forward``: the mean of the members' log-probabilities [N, T, V] (``_log_probs``
        of it is the ensemble's next-word distribution, the same as ``step``'s)."""
        return torch.stack([m._log_probs(m(features, inputs, image_of=image_of)) for m in self.members]).mean(dim=0)

    _log_probs = MRNN._log_probs  # renormalises the mean (log_softmax), PAD and UNK still excluded
    _unroll = MRNN._unroll
    greedy = MRNN.greedy
    beam_search = MRNN.beam_search


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


def sentence_rows(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sentences [B, S, T] → (the image of each present sentence [N], the sentences [N, T']), cut to the
    longest sentence present (the recurrence costs per time step; short snippets would pay for T)."""
    present = (tokens != PAD).any(dim=-1)                               # [B, S]
    image_of = torch.arange(len(tokens), device=tokens.device)[:, None].expand_as(present)[present]
    rows = tokens[present]
    width = int((rows != PAD).sum(dim=1).max()) if len(rows) else 0
    return image_of, rows[:, :max(width, 1)]


@torch.no_grad()
def generate(model: MRNN, features: torch.Tensor, vocab: list[str], beam: int, max_len: int,
             length_penalty: float = 0.0, chunk: int = 250) -> list[str]:
    """Captions for images [N, D] or [N, M, D] (whole image, regions); beam 1 is greedy. None ends on a word that
    needs a continuation (``CONTINUED_WORDS``)."""
    model.eval()
    continued = continued_words(vocab, model.args.vocab_size).to(features.device)
    captions = []
    for start in range(0, len(features), chunk):
        part = features[start:start + chunk]
        ids = (model.greedy(part, max_len, continued) if beam == 1
               else model.beam_search(part, beam, max_len, length_penalty, continued))
        captions += [" ".join(words) for words in ids_to_words(ids, vocab, model.args.end)]
    return captions


def reward_references(reward, tokens: torch.Tensor, end: int) -> list:
    """Each image's reference sentences [B, S, T] prepared once for ``reward.score`` (empty slots dropped)."""
    return [reward.references([r for r in caption_ids(image, end) if r]) for image in tokens]


def distillation_loss(student: torch.Tensor, teacher: MRNNEnsemble, features: torch.Tensor, ids: torch.Tensor,
                      image_of: torch.Tensor, end: int) -> torch.Tensor:
    """Word-level knowledge distillation on the student's own captions (on-policy; Kim & Rush 2016 at the word
    level, Agarwal et al. 2024 on the student's samples): at every step of the sampled captions ``ids`` [N, L], the
    cross-entropy from the teacher's next-word distribution to the student's (``student``: its log-distributions
    [N, L, V], with gradients), i.e. KL(teacher || student) up to the teacher's entropy. Summed over each caption's
    words (END included), averaged over captions. The teacher reads the images ``features[image_of]`` and the same
    prefixes, in eval mode, without gradients."""
    inputs = torch.cat([torch.full_like(ids[:, :1], end), ids[:, :-1]], dim=1)
    with torch.no_grad():
        target = teacher._log_probs(teacher(features, inputs, image_of=image_of)).exp()     # [N, L, V]
    # PAD and UNK are -inf for both; 0 * -inf would be nan, and neither model ever puts mass there
    cross_entropy = -(target * student.clamp(min=-1e4)).sum(dim=-1)                        # [N, L]
    return (cross_entropy * (ids != PAD)).sum(dim=1).mean()


def self_critical_loss(model: torch.nn.Module, features: torch.Tensor, tokens: torch.Tensor, reward,
                       samples: int, end: int, max_len: int, temperature: float = 1.0,
                       teacher: MRNNEnsemble | None = None,
                       distill: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Self-critical sequence training (Rennie et al. 2017) with the mean-of-the-others baseline (Luo 2020):
    ``samples`` captions drawn per image, each rewarded by its CIDEr-D against the image's references, and
    pushed up or down by how much it beats the image's other samples; no greedy decode is needed.
    Images [B, D], their sentences [B, S, T] → (loss, {"reward": mean reward of the samples, and with a teacher
    "distill": the mean ``distillation_loss``}). ``reward`` scores a caption against references
    (``vsa_dist.eval.cider.CiderD``). ``temperature`` < 1 draws from the sharpened distribution, whose samples are
    the greedy caption's neighbours rather than the long tail, and whose expected reward is the objective (it nears
    the greedy caption's as the temperature falls). With ``teacher`` (beyond the paper), ``distill`` x the
    ``distillation_loss`` toward it on the same samples is added: an ensemble's next-word distributions, taught to
    one model where that model goes."""
    drawn = model(features.repeat_interleave(samples, dim=0), sample_len=max_len, temperature=temperature,
                  distributions=teacher is not None)
    ids, log_probs = drawn[:2]
    references = reward_references(reward, tokens, end)
    scores = torch.tensor([reward.score(caption, references[i // samples])
                           for i, caption in enumerate(caption_ids(ids, end))], device=log_probs.device)
    scores = scores.view(-1, samples)
    advantage = scores - (scores.sum(dim=1, keepdim=True) - scores) / (samples - 1)
    loss = -(advantage.view(-1) * log_probs.sum(dim=1)).mean()
    logged = {"reward": scores.mean().item()}
    if teacher is not None:
        image_of = torch.arange(len(features), device=features.device).repeat_interleave(samples)
        kd = distillation_loss(drawn[2], teacher, features, ids, image_of, end)
        loss = loss + distill * kd
        logged["distill"] = kd.item()
    return loss, logged
