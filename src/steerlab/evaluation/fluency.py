r"""Fluency and diversity of generated text from its n-grams: weighted n-gram entropy, distinct-n, repetition.

Tokens are the lowercased runs of word characters plus each other non-space character on its own
(`re.findall(r"\w+|[^\w\s]", text.lower())`): close to NLTK's word_tokenize, which EasyEdit uses,
without needing NLTK's data files. Lowercasing makes "The" and "the" one token, so repetition is not
hidden by capitalisation. A text too short to have any n-gram of a size scores 0 for that size.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from ..errors import UsageError

_TOKEN = re.compile(r"\w+|[^\w\s]")

# EasyEdit's n_gram_entropy: bigram and trigram entropies (bits), weighted 2/3 and 4/3, then averaged.
ENTROPY_WEIGHTS: dict[int, float] = {2: 2 / 3, 3: 4 / 3}


def tokenize(text: str) -> list[str]:
    """The tokens every measure here counts n-grams over."""
    return _TOKEN.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """All contiguous n-grams of `tokens`, in order."""
    if n < 1:
        raise UsageError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def ngram_entropy(text: str, n: int) -> float:
    """Shannon entropy (bits) of the text's n-gram frequency distribution: low when the text loops."""
    counts = Counter(ngrams(tokenize(text), n))
    total = sum(counts.values())
    return 0.0 - sum(c / total * math.log2(c / total) for c in counts.values())


def weighted_ngram_entropy(text: str) -> float:
    """EasyEdit's fluency score: mean of 2/3 * bigram entropy and 4/3 * trigram entropy (bits)."""
    return sum(w * ngram_entropy(text, n) for n, w in ENTROPY_WEIGHTS.items()) / len(ENTROPY_WEIGHTS)


def distinct_n(text: str, n: int) -> float:
    """Unique n-grams / total n-grams within one text (Li et al. 2016): 1 means no n-gram repeats."""
    grams = ngrams(tokenize(text), n)
    return len(set(grams)) / len(grams) if grams else 0.0


def corpus_distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / total n-grams pooled over several texts: low when generations for a prompt repeat each other."""
    grams = [g for t in texts for g in ngrams(tokenize(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(text: str, n: int = 3) -> float:
    """Share of tokens inside an n-gram that occurs more than once in the text: 0 for varied text, 1 for a pure loop."""
    tokens = tokenize(text)
    grams = ngrams(tokens, n)
    if not grams:
        return 0.0
    counts = Counter(grams)
    covered = [False] * len(tokens)
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            covered[i : i + n] = [True] * n
    return sum(covered) / len(tokens)
