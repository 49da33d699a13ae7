"""CIDEr-D as a training reward (self-critical sequence training): pycocoevalcap's formula with the document
frequencies of a fixed corpus. Pure Python.

pycocoevalcap's ``CiderScorer`` takes its document frequencies (and the log of the document count) from
the references passed to the same call; a batch of 10 images would then weigh n-grams by their rarity in
that batch. Here they come from the whole train split once, as in Rennie et al. (2017) and their
successors, and the references' tf-idf vectors are built once per image, not once per candidate.
``tests/test_generation.py`` checks that, given the same references as corpus, the scores are
pycocoevalcap's exactly.

Sentences are sequences of hashable tokens (word ids work as well as words).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

Sentence = Sequence[Hashable]


def ngram_counts(sentence: Sentence, n: int = 4) -> Counter:
    return Counter(tuple(sentence[i:i + k]) for k in range(1, n + 1) for i in range(len(sentence) - k + 1))


class CiderD:
    def __init__(self, corpus: Sequence[Sequence[Sentence]], n: int = 4, sigma: float = 6.0):
        """``corpus``: every image's reference sentences; each image is one document."""
        if not corpus:
            raise ValueError("CIDEr-D needs a non-empty reference corpus")
        self.n, self.sigma = n, sigma
        self.document_frequency: Counter = Counter()
        for references in corpus:
            self.document_frequency.update({g for ref in references for g in ngram_counts(ref, n)})
        self.log_documents = math.log(len(corpus))

    def _vector(self, sentence: Sentence) -> tuple[list[dict], list[float], int]:
        """tf-idf weights by n-gram order, their norms, and the sentence length."""
        vec: list[dict] = [{} for _ in range(self.n)]
        norm = [0.0] * self.n
        for gram, tf in ngram_counts(sentence, self.n).items():
            weight = tf * (self.log_documents - math.log(max(1.0, self.document_frequency[gram])))
            vec[len(gram) - 1][gram] = weight
            norm[len(gram) - 1] += weight * weight
        # pycocoevalcap measures length in bigrams (its ``n == 1`` is the second order): the same differences,
        # except that empty and one-word sentences tie
        return vec, [math.sqrt(x) for x in norm], max(len(sentence) - 1, 0)

    def references(self, references: Sequence[Sentence]) -> list[tuple[list[dict], list[float], int]]:
        """One image's references, prepared once for scoring any number of candidates against them."""
        return [self._vector(ref) for ref in references]

    def score(self, candidate: Sentence, prepared: list[tuple[list[dict], list[float], int]]) -> float:
        """CIDEr-D of one candidate against prepared references (x10, as pycocoevalcap reports it)."""
        vec, norm, length = self._vector(candidate)
        total = 0.0
        for ref_vec, ref_norm, ref_length in prepared:
            penalty = math.exp(-((length - ref_length) ** 2) / (2 * self.sigma ** 2))
            for k in range(self.n):
                if norm[k] == 0 or ref_norm[k] == 0:
                    continue
                # clipped: a candidate repeating an n-gram gets no more credit than the reference gives it
                dot = sum(min(w, ref_vec[k].get(g, 0.0)) * ref_vec[k].get(g, 0.0) for g, w in vec[k].items())
                total += dot / (norm[k] * ref_norm[k]) * penalty
        return 10.0 * total / (self.n * len(prepared))
