"""The alignment model of Karpathy & Fei-Fei (2015), section 3.1. Imports only torch.

Regions:   v_i = W_m f_i + b_m                      for the whole image and its R regions
Words:     x_t = W_w 1_t                            (learned word vectors: no word2vec here)
           e_t = ReLU(W_e x_t + b_e)
           h^f_t = ReLU(e_t + W_f h^f_{t-1} + b_f)
           h^b_t = ReLU(e_t + W_b h^b_{t+1} + b_b)
           s_t = ReLU(W_d (h^f_t + h^b_t) + b_d)
Score:     S_kl = sum_t max_i v_i^T s_t             (image k, sentence l)
Loss:      sum_k [ sum_l max(0, S_kl - S_kk + 1) + sum_l max(0, S_lk - S_kk + 1) ]

Beyond the paper: ``score_norm="mean"`` averages over words instead of summing (long sentences no
longer win by length; the ``train_align_modern`` preset), ``hardest_negative=True`` keeps only the
hardest negative per row and column (VSE++, Faghri et al. 2018), and ``l2_features`` feeds the CNN
features at unit length (on by default: docs/alignment.md says why). For a model that learns fast
(docs/alignment.md measures each): ``word_rnn="gru"`` reads the words with a bidirectional GRU
(directions summed, as h^f + h^b, then W_d without the ReLU); ``cosine=True`` puts v_i and s_t at unit
length (scores are cosines; use a margin near 0.2); ``global_weight`` adds a global term beside the
region–word one,

    S_kl = local_weight · (sum or mean)_t max_i v_iᵀ s_t  +  global_weight · cos(v_0, mean_t s_t),

v_0 being the whole image's vector: the word–region affinities the snippet MRF reads stay v_iᵀ s_t. With
``global_pooling="gpo"`` the global term pools instead of taking v_0 and the mean: GPO (Chen et al. 2021, VSE∞)
over all 1+R region vectors and over the sentence's s_t — each dimension's values sorted from the largest down and
weighed by weights that a small bidirectional GRU reads off the positions' sine encodings (they depend on the
set's size only). With ``local_pooling="attention"`` each word attends over the regions instead of taking the best
one (SCAN's text-to-image attention, Lee et al. 2018): the word's cosines with the regions, clipped (leaky ReLU 0.1)
and put at unit length over the sentence's words for each region, set a softmax over the regions at temperature
1/9; the word then scores cos(s_t, a_t) against a_t = sum_i α_ti v_i, the attended image,

    local term = (sum or mean)_t cos(s_t, sum_i α_ti v_i)        instead of (sum or mean)_t max_i v_iᵀ s_t,

the snippet MRF still reading v_iᵀ s_t.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vsa_dist.models.args import AlignmentArgs, reads_regions  # noqa: F401  (the model's args, declared once)
from vsa_dist.models.encoder import ImageEncoder
from vsa_dist.models.tokens import PAD

ATTENTION_SHARPNESS = 9.0  # SCAN's λ_1 for text-to-image attention (their best on Flickr30K and COCO)


def sine_positions(steps: int, dim: int) -> torch.Tensor:
    """[steps, dim] sine/cosine encodings of the positions 1 … steps (Vaswani et al. 2017)."""
    position = torch.arange(1, steps + 1, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-torch.log(torch.tensor(10000.0)) / dim))
    encoding = torch.zeros(steps, dim)
    encoding[:, 0::2], encoding[:, 1::2] = torch.sin(position * rate), torch.cos(position * rate)
    return encoding


class GPO(nn.Module):
    """Generalized pooling operator (Chen et al. 2021): a set of vectors [N, K, h] (``mask`` [N, K]: which are in the
    set) → [N, h], each dimension's valid values sorted from the largest down and summed with weights θ_1 … θ_n
    (n: the set's size) = softmax(w · BiGRU(sine encodings of 1 … n) / 0.1). Max pooling and mean pooling are two of
    the weightings it can learn."""

    def __init__(self, encoding_dim: int = 32, hidden: int = 32):
        super().__init__()
        self.encoding_dim = encoding_dim
        self.gru = nn.GRU(encoding_dim, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(hidden, 1, bias=False)

    def weights(self, sizes: torch.Tensor, steps: int) -> torch.Tensor:
        """[N, steps] pooling weights for sets of ``sizes`` (≥ 1) elements, zero past each set's end; computed once
        per distinct size."""
        distinct, which = sizes.unique(return_inverse=True)
        encodings = sine_positions(steps, self.encoding_dim).to(self.out.weight.device)
        packed = nn.utils.rnn.pack_padded_sequence(encodings.expand(len(distinct), -1, -1), distinct.cpu(),
                                                   batch_first=True, enforce_sorted=False)
        out, _ = nn.utils.rnn.pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=steps)
        forward, backward = out.chunk(2, dim=-1)
        logits = self.out((forward + backward) / 2).squeeze(-1)                # [U, steps]
        past_end = torch.arange(steps, device=logits.device)[None, :] >= distinct[:, None].to(logits.device)
        return torch.softmax(logits.masked_fill(past_end, float("-inf")) / 0.1, dim=1)[which]

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        steps = values.shape[1]
        sizes = mask.sum(dim=1).long()
        valid = mask[..., None] > 0
        ordered = values.masked_fill(~valid, float("-inf")).sort(dim=1, descending=True).values
        past_end = torch.arange(steps, device=values.device)[None, :, None] >= sizes[:, None, None]
        ordered = ordered.masked_fill(past_end, 0.0)                            # an empty set pools to 0
        return (ordered * self.weights(sizes.clamp(min=1), steps)[..., None]).sum(dim=1)


def one_sentence_each(tokens: torch.Tensor) -> torch.Tensor:
    """[B, S, T] → [B, T]: one of each image's non-empty sentences, drawn uniformly."""
    present = (tokens != PAD).any(dim=-1).float()                         # [B, S]
    choice = torch.multinomial(present, 1).squeeze(1)
    return tokens[torch.arange(len(tokens)), choice]


def longest(mask: torch.Tensor) -> int:
    """Words in the longest sentence of a [N, T] word mask (0 for no sentences)."""
    return int(mask.sum(dim=1).max().item()) if len(mask) else 0


ENCODE_IMAGES = 32  # images per CNN call when the model embeds them without gradients


class AlignmentModel(nn.Module):
    def __init__(self, args: AlignmentArgs):
        super().__init__()
        self.args = args
        h = args.embed_dim
        self.region_proj = nn.Linear(args.feature_dim, h)                       # W_m, b_m
        self.word_vectors = nn.Embedding(args.vocab_size, args.word_dim, padding_idx=PAD)  # W_w
        self.word_out = nn.Linear(h, h)                                         # W_d, b_d
        self.dropout = nn.Dropout(args.dropout)
        # the CNN's upper blocks, trained with the model on trunk maps (``encoder=cached``); None: vectors come in
        self.encoder = ImageEncoder(args.encoder, args.trunk_block) if args.encoder else None
        if args.local_pooling == "attention" and not args.cosine:
            raise ValueError("local_pooling='attention' scores cosines: it needs cosine=True")
        if args.global_pooling == "gpo":                                         # one pooling per side
            self.image_pool, self.sentence_pool = GPO(), GPO()
        # the loss's negatives: hardest only (VSE++) once a warm-up on all of them is over (set per epoch)
        self.use_hardest = args.hardest_negative
        # the words' recurrence: a GRU, or the paper's BRNN (only the one in use exists: DDP wants every parameter
        # to get a gradient)
        self.gru = nn.GRU(args.word_dim, h, batch_first=True, bidirectional=True) if args.word_rnn == "gru" else None
        if self.gru is not None:
            return
        self.word_in = nn.Linear(args.word_dim, h)                              # W_e, b_e
        self.forward_rec = nn.Linear(h, h)                                      # W_f, b_f
        self.backward_rec = nn.Linear(h, h)                                     # W_b, b_b
        for rec in (self.forward_rec, self.backward_rec):
            # Near-identity recurrences: a ReLU RNN starts out neither exploding nor forgetting (Le et al. 2015).
            nn.init.eye_(rec.weight)
            rec.weight.data.mul_(0.5)
            nn.init.zeros_(rec.bias)

    def embed_regions(self, features: torch.Tensor) -> torch.Tensor:
        """[B, 1+R, D] CNN features → [B, 1+R, h] region vectors v_i. A model that carries its encoder takes trunk
        maps [B, C, h, w] instead (or, running the whole CNN, the images [B, 3, S, S]): its blocks make each image's
        whole-image vector, [B, 1, D]."""
        if features.dim() == 4:
            if self.encoder is None:
                raise ValueError("trunk maps in, but this model has no CNN blocks to run them through")
            # without gradients (evaluation, indexing), a few images at a time: 500 images' activations at the
            # stem's resolution are gigabytes; in training the batch is the step's (BatchNorm may learn from it)
            chunks = [features] if torch.is_grad_enabled() else features.split(ENCODE_IMAGES)
            features = torch.cat([self.encoder.top(chunk) for chunk in chunks])[:, None]
        features = features.float()
        if self.args.l2_features:
            features = F.normalize(features, dim=-1)
        regions = self.region_proj(self.dropout(features))
        return F.normalize(regions, dim=-1) if self.args.cosine else regions

    def embed_scored_regions(self, features: torch.Tensor) -> torch.Tensor:
        """The region vectors the image–sentence score reads: all 1+R, or only the whole image's v_0 when the
        region–word term weighs nothing and the global term reads v_0 alone (the R regions' projection would be a
        fifth of a step's work, unused) or the model was built to score the whole image alone (``regions=False``).
        The snippet MRF's affinities (``word_region_scores``) read every region either way."""
        whole_image_only = features.dim() == 3 and not reads_regions(self.args)  # trunk maps make that row alone
        return self.embed_regions(features[:, :1] if whole_image_only else features)

    def embed_words(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, T] token ids (PAD-padded on the right) → ([N, T, h] word vectors s_t, [N, T] mask)."""
        mask = (tokens != PAD).to(torch.float32)
        # Only as many steps as the batch's longest sentence: the rest is padding for every row, and a batch's
        # longest is ~24 of 32 words on Flickr8k. The padding columns come back as zeros, so shapes stay fixed.
        steps = longest(mask)
        if steps == 0:
            return mask.new_zeros(*tokens.shape, self.word_out.out_features), mask
        if self.gru is not None:
            s = self.gru_words(tokens[:, :steps], mask[:, :steps])
        else:
            s = self.brnn_words(tokens[:, :steps], mask[:, :steps])
        if self.args.cosine:
            s = F.normalize(s, dim=-1) * mask[:, :steps, None]
        return F.pad(s, (0, 0, 0, tokens.shape[1] - steps)), mask

    def brnn_words(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The paper's BRNN over [N, steps] tokens → [N, steps, h] s_t (zero past each sentence's end)."""
        steps = tokens.shape[1]
        e = F.relu(self.word_in(self.dropout(self.word_vectors(tokens))))  # [N, steps, h]
        h_f, h_b = [], [None] * steps
        state = e.new_zeros(e.shape[0], e.shape[2])
        for t in range(steps):
            state = F.relu(e[:, t] + self.forward_rec(state))
            h_f.append(state)
        state = e.new_zeros(e.shape[0], e.shape[2])
        for t in reversed(range(steps)):
            # Zero past each sentence's end, so its backward pass starts at its own last word.
            state = F.relu(e[:, t] + self.backward_rec(state)) * mask[:, t, None]
            h_b[t] = state
        hidden = torch.stack(h_f, dim=1) + torch.stack(h_b, dim=1)
        return F.relu(self.word_out(self.dropout(hidden))) * mask[:, :, None]

    def gru_words(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """A bidirectional GRU over [N, steps] tokens → [N, steps, h]: W_d (h^f_t + h^b_t) + b_d, each direction
        run over the sentence's own words only (packed), zero past its end."""
        lengths = mask.sum(dim=1).clamp(min=1).long().cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.dropout(self.word_vectors(tokens)), lengths, batch_first=True,
                                                   enforce_sorted=False)
        out, _ = nn.utils.rnn.pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=tokens.shape[1])
        forward, backward = out.chunk(2, dim=-1)
        return self.word_out(self.dropout(forward + backward)) * mask[:, :, None]

    def score(self, regions: torch.Tensor, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """S [K images, L sentences] = sum (or mean) over words of the best region's dot product."""
        steps = longest(mask)                                                   # padding columns score 0
        words, mask = words[:, :steps], mask[:, :steps]

        def local() -> torch.Tensor:
            dots = torch.einsum("krh,lth->kltr", regions, words)                # [K, L, T, 1+R]
            return self.over_words(self.per_word(dots, regions[:, None], mask[None]), mask[None])

        return self.weighed(local, regions, words, mask, paired=False)

    def paired_score(self, regions: torch.Tensor, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """S [B]: image b with sentence b only, the diagonal of ``score`` without the rest of its matrix."""
        steps = longest(mask)
        words, mask = words[:, :steps], mask[:, :steps]

        def local() -> torch.Tensor:
            dots = torch.einsum("brh,bth->btr", regions, words)                 # [B, T, 1+R]
            return self.over_words(self.per_word(dots, regions, mask), mask)

        return self.weighed(local, regions, words, mask, paired=True)

    def weighed(self, local: Callable[[], torch.Tensor], regions: torch.Tensor, words: torch.Tensor,
                mask: torch.Tensor, paired: bool) -> torch.Tensor:
        """local_weight · the region–word term + global_weight · cos(v_0, mean_t s_t): every pair of images and
        sentences, or (``paired``) image b with sentence b. The region–word term is the costly one: computed only
        when it weighs something; the paper's model is that term alone."""
        if not self.args.global_weight:
            return local()
        image, sentence = self.global_vectors(regions, words, mask)
        total = self.args.global_weight * ((image * sentence).sum(dim=-1) if paired else image @ sentence.T)
        return total + self.args.local_weight * local() if self.args.local_weight else total

    def global_vectors(self, regions: torch.Tensor, words: torch.Tensor, mask: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """The global term's unit vectors [K, h] and [L, h]: the whole image's v_0 and each sentence's mean s_t, or
        (``global_pooling="gpo"``) GPO over all 1+R region vectors and over the sentence's s_t."""
        steps = words.shape[1]
        mask = mask[:, :steps]
        if self.args.global_pooling == "gpo":
            image = self.image_pool(regions, regions.new_ones(regions.shape[:2]))
            sentence = self.sentence_pool(words, mask)
        else:
            image = regions[:, 0]
            sentence = (words * mask[:, :, None]).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1)
        return F.normalize(image, dim=-1), F.normalize(sentence, dim=-1)

    def per_word(self, dots: torch.Tensor, regions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Each word's region score [..., T] from its dot products with the regions [..., T, 1+R]: the best
        region's (the paper), or (``local_pooling="attention"``) cos(s_t, a_t) with a_t the regions ``regions``
        [..., 1+R, h] weighed by the word's attention over them. a_t itself is never built ([K, L, T, h] would be
        gigabytes): a_tᵀ s_t = sum_i α_ti v_iᵀ s_t, and |a_t|² = α_tᵀ (V Vᵀ) α_t with V Vᵀ one [1+R, 1+R] matrix
        per image."""
        if self.args.local_pooling == "max":
            return dots.amax(dim=-1)
        clipped = F.leaky_relu(dots, 0.1) * mask[..., None]
        # each region's column at unit length over the sentence's words: a region that matches every word
        # (the whole image) does not take every word's attention
        normed = clipped / (clipped.pow(2).sum(dim=-2, keepdim=True).sqrt() + 1e-8)
        attention = torch.softmax(ATTENTION_SHARPNESS * normed, dim=-1)         # [..., T, 1+R]
        gram = regions @ regions.transpose(-1, -2)                              # [..., 1+R, 1+R]
        attended_norm = ((attention @ gram) * attention).sum(dim=-1).clamp(min=1e-12).sqrt()
        return (attention * dots).sum(dim=-1) / attended_norm                   # s_t at unit length: a cosine

    def over_words(self, best: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Each word's best-region score [..., T] summed (or averaged) over the sentence's words."""
        total = (best * mask).sum(dim=-1)
        if self.args.score_norm == "mean":
            total = total / mask.sum(dim=-1).clamp(min=1)
        return total

    def word_region_scores(self, features: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image b with sentence b: ([B, T, 1+R] v_iᵀ s_t for every word and region, [B] words per sentence),
        the unary terms of snippet alignment (``vsa_dist.models.snippets``)."""
        regions = self.embed_regions(features)
        words, mask = self.embed_words(tokens)
        return torch.einsum("brh,bth->btr", regions, words), mask.sum(dim=1).long()

    def loss(self, scores: torch.Tensor) -> torch.Tensor:
        """The paper's bidirectional ranking loss over a square batch (image k belongs with sentence k)."""
        own = torch.arange(len(scores), device=scores.device)
        every = torch.ones_like(own, dtype=torch.bool)
        return self.ranking_loss(scores, scores, own, every, own, every, 0)

    def ranking_loss(self, own_images: torch.Tensor, own_sentences: torch.Tensor, owner: torch.Tensor,
                     valid: torch.Tensor, all_owners: torch.Tensor, all_valid: torch.Tensor,
                     offset: int) -> torch.Tensor:
        """The bidirectional hinge for this worker's sentences, each against every other image's sentences and
        every other image of the whole batch.

        ``own_images`` [b, L]: this worker's b images against all L sentences of the batch; ``own_sentences``
        [K, l]: all K images against this worker's l sentences. This worker's images are rows ``offset …
        offset + b - 1`` of the batch; its sentence j belongs to its image ``owner[j]``, sentence q of the batch to
        image ``all_owners[q]``; ``valid`` / ``all_valid`` are False for an empty sentence slot (an image with fewer
        sentences), which is neither a positive nor a negative. With one sentence per image (``owner`` = 0 … b-1)
        this is the paper's loss; with all of an image's sentences in the step, its other sentences are not
        negatives. Summed over the workers, it is the loss of the whole batch on one worker."""
        margin, sentences = self.args.margin, torch.arange(own_sentences.shape[1], device=owner.device)
        image = owner + offset                                                  # each own sentence's image, in K
        positive = own_sentences[image, sentences]                              # [l]
        # rank images for sentence j: every image but its own
        by_image = (own_sentences - positive[None, :] + margin).clamp(min=0)
        by_image = by_image.masked_fill(torch.arange(len(own_sentences), device=owner.device)[:, None] == image, 0)
        # rank sentences for sentence j's image: every sentence of another image
        by_sentence = (own_images[owner] - positive[:, None] + margin).clamp(min=0)
        by_sentence = by_sentence.masked_fill((all_owners[None, :] == image[:, None]) | ~all_valid[None, :], 0)
        if self.use_hardest:
            per_sentence = by_image.amax(dim=0) + by_sentence.amax(dim=1)
        else:
            per_sentence = by_image.sum(dim=0) + by_sentence.sum(dim=1)
        return (per_sentence * valid).sum()

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, gather=None) -> torch.Tensor:
        """Loss of a batch of B images with their sentences: ``tokens`` [B, T], one sentence each (the paper), or
        [B, S, T], each image's S sentence slots (all PAD: an empty slot), every one a positive pair.

        ``gather`` (data parallel): a function taking this worker's (regions, words, mask) and returning the
        whole batch's, concatenated over workers, and this worker's offset in it (in images); the loss then ranks
        against every worker's pairs, as one batch of the paper's size would, not only against this worker's share.
        """
        regions = self.embed_scored_regions(features)
        per_image = tokens.shape[1] if tokens.dim() == 3 else 1
        words, mask = self.embed_words(tokens.flatten(0, 1) if tokens.dim() == 3 else tokens)
        owner = torch.arange(len(features), device=words.device).repeat_interleave(per_image)
        valid = mask.sum(dim=1) > 0
        if gather is None:
            scores = self.score(regions, words, mask)
            return self.ranking_loss(scores, scores, owner, valid, owner, valid, 0)
        (all_regions, all_words, all_mask), offset = gather(regions, words, mask)
        all_owners = torch.arange(len(all_regions), device=words.device).repeat_interleave(per_image)
        return self.ranking_loss(self.score(regions, all_words, all_mask), self.score(all_regions, words, mask),
                                 owner, valid, all_owners, all_mask.sum(dim=1) > 0, offset)
