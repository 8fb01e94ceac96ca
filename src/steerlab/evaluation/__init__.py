"""Offline scorers for steered text: sentiment, toxicity, refusal, fluency and diversity, plus AUROC."""

from steerlab.evaluation.auroc import auroc
from steerlab.evaluation.classifier import LocalTextClassifier
from steerlab.evaluation.fluency import (
    corpus_distinct_n,
    distinct_n,
    ngram_entropy,
    repetition_rate,
    tokenize,
    weighted_ngram_entropy,
)
from steerlab.evaluation.refusal import REFUSAL_PHRASES, is_refusal, refusal_rate
from steerlab.evaluation.sentiment import ClassifierSentimentScorer, vader_compound, vader_scores
from steerlab.evaluation.toxicity import ClassifierToxicityScorer, ProfanityCheckScorer, mean_score, toxic_share

__all__ = [
    "LocalTextClassifier",
    "corpus_distinct_n",
    "distinct_n",
    "ngram_entropy",
    "repetition_rate",
    "tokenize",
    "weighted_ngram_entropy",
    "auroc",
    "REFUSAL_PHRASES",
    "is_refusal",
    "refusal_rate",
    "ClassifierSentimentScorer",
    "vader_compound",
    "vader_scores",
    "ClassifierToxicityScorer",
    "ProfanityCheckScorer",
    "mean_score",
    "toxic_share",
]
