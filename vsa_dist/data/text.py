"""Tokenisation and the vocabulary: one definition shared by the shard builder and the models."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

# Karpathy's preprocessing: lower case, punctuation dropped, split on anything that is not a word char.
_WORD = re.compile(r"[a-z0-9]+")

# The paper keeps words seen at least 5 times in the training sentences.
VOCAB_MIN_COUNT = 5


def tokenize(raw: str) -> list[str]:
    return _WORD.findall(raw.lower())


def build_vocab(token_lists: Iterable[list[str]], min_count: int = VOCAB_MIN_COUNT) -> tuple[list[str], dict[str, int]]:
    """Words seen ``min_count`` or more times, most frequent first (ties alphabetical, so it is stable)."""
    counts = Counter(tok for tokens in token_lists for tok in tokens)
    kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return kept, {w: counts[w] for w in kept}
