"""The generator's training losses: teacher forcing's cross-entropy, and beyond the paper self-critical sequence
training on CIDEr-D and word-level distillation from an ensemble. Torch only; the reward (``eval/cider.py``) is
passed in."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vsa_dist.models.decoding import caption_ids
from vsa_dist.models.tokens import PAD


def token_nll(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over the non-PAD targets, and their count (mean = / count; perplexity = exp).

    ``label_smoothing`` ε: the target is 1 − ε on the reference word plus ε spread over the vocabulary
    (a training loss only: perplexity is measured with ε = 0)."""
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=PAD,
                          reduction="sum", label_smoothing=label_smoothing)
    return nll, (targets != PAD).sum()


def reward_references(reward, tokens: torch.Tensor, end: int) -> list:
    """Each image's reference sentences [B, S, T] prepared once for ``reward.score`` (empty slots dropped)."""
    return [reward.references([r for r in caption_ids(image, end) if r]) for image in tokens]


def distillation_loss(student: torch.Tensor, teacher: nn.Module, features: torch.Tensor, ids: torch.Tensor,
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
                       teacher: nn.Module | None = None,
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
