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

Decoding (greedy, beam search, sampling) is in ``decoding.py``; the training losses beyond teacher forcing's
(self-critical, distillation) in ``losses.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vsa_dist.models.args import MRNNArgs
from vsa_dist.models.decoding import sample
from vsa_dist.models.tokens import PAD, UNK

NEVER_GENERATED = (PAD, UNK)  # renormalised away in every next-word distribution


def teacher_forcing(tokens: torch.Tensor, end: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PAD-padded sentences [N, T] → (inputs, targets) [N, T+1]: START w_1..w_n and w_1..w_n END."""
    n = len(tokens)
    lengths = (tokens != PAD).sum(dim=1)
    inputs = torch.cat([torch.full((n, 1), end, dtype=tokens.dtype, device=tokens.device), tokens], dim=1)
    targets = torch.cat([tokens, torch.full((n, 1), PAD, dtype=tokens.dtype, device=tokens.device)], dim=1)
    targets[torch.arange(n, device=tokens.device), lengths] = end
    return inputs, targets


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

        Without ``inputs``: ``decoding.sample(self, features, sample_len, temperature, distributions)``. Sampling
        goes through ``forward`` so that a DistributedDataParallel wrapper sees it and averages the gradients of
        self-critical training.
        """
        if inputs is None:
            return sample(self, features, sample_len, temperature, distributions)
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

class MRNNEnsemble(nn.Module):
    """Several generators over one vocabulary decoding as one: each step's next-word distribution is the
    renormalised geometric mean of theirs (their log-probabilities averaged). Beyond the paper.

    It has the step interface the decoders use (``start``, ``step``, ``_log_probs``; models/decoding.py), so they
    decode it unchanged: the members' image biases and states travel side by side
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


def sentence_rows(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sentences [B, S, T] → (the image of each present sentence [N], the sentences [N, T']), cut to the
    longest sentence present (the recurrence costs per time step; short snippets would pay for T)."""
    present = (tokens != PAD).any(dim=-1)                               # [B, S]
    image_of = torch.arange(len(tokens), device=tokens.device)[:, None].expand_as(present)[present]
    rows = tokens[present]
    width = int((rows != PAD).sum(dim=1).max()) if len(rows) else 0
    return image_of, rows[:, :max(width, 1)]
