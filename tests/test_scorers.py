"""Offline text scorers: hand-computed values, known inputs, and a tiny random HF classifier built on the fly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from steerlab.evaluation import (
    ClassifierSentimentScorer,
    ClassifierToxicityScorer,
    LocalTextClassifier,
    ProfanityCheckScorer,
    auroc,
    corpus_distinct_n,
    distinct_n,
    is_refusal,
    mean_score,
    ngram_entropy,
    refusal_rate,
    repetition_rate,
    tokenize,
    toxic_share,
    vader_compound,
    vader_scores,
    weighted_ngram_entropy,
)
from steerlab.evaluation.auroc import midranks


def save_tiny_classifier(folder: Path, labels: list[str], problem_type: str | None = None) -> Path:
    """A randomly initialised 1-layer BERT classifier and a word-level tokenizer, saved as an HF folder."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "i",
        "love",
        "this",
        "it",
        "is",
        "wonderful",
        "terrible",
        "and",
        "hate",
        "the",
        "movie",
    ]
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type=problem_type,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


TEXTS = ["I love this movie", "this is terrible and I hate it", "the movie", "wonderful"]


# metrics


def test_auroc_hand_computed_without_ties() -> None:
    # Positives 0.35, 0.8 vs negatives 0.1, 0.4: 3 of 4 pairs ordered right.
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)


def test_auroc_counts_ties_as_half() -> None:
    # Pairs (pos, neg): (0.5, 0.5) tie = 1/2, (0.5, 0.2), (0.9, 0.5), (0.9, 0.2) wins: 3.5 / 4.
    assert auroc([0.5, 0.5, 0.2, 0.9], [True, False, False, True]) == pytest.approx(0.875)
    assert auroc([1.0] * 5, [True, False, True, False, False]) == pytest.approx(0.5)
    assert midranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]


def test_auroc_rejects_one_class_and_length_mismatch() -> None:
    with pytest.raises(ValueError, match="both classes"):
        auroc([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="labels"):
        auroc([0.1, 0.2], [True])


# sentiment


def test_vader_known_inputs() -> None:
    assert vader_compound("I love this, it is wonderful") > 0.5
    assert vader_compound("This is terrible and I hate it") < -0.5
    assert abs(vader_compound("The table is in the room.")) < 0.05
    assert vader_scores(["good", "bad"]) == [vader_compound("good"), vader_compound("bad")]


def test_classifier_sentiment_shape_and_range(tmp_path: Path) -> None:
    scorer = ClassifierSentimentScorer(save_tiny_classifier(tmp_path, ["NEGATIVE", "POSITIVE"]))
    scores = scorer.scores(TEXTS, batch_size=3)
    assert len(scores) == len(TEXTS)
    assert all(-1.0 <= s <= 1.0 for s in scores)
    probs = scorer.positive_probabilities(TEXTS)
    assert scores == pytest.approx([2 * p - 1 for p in probs])


def test_classifier_needs_config_json(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        LocalTextClassifier(tmp_path)


def test_classifier_label_must_be_named(tmp_path: Path) -> None:
    folder = save_tiny_classifier(tmp_path, ["LABEL_0", "LABEL_1"])
    with pytest.raises(ValueError, match="pass the label name"):
        ClassifierSentimentScorer(folder)
    assert ClassifierSentimentScorer(folder, positive_label="LABEL_1").positive == 1


# toxicity


def test_classifier_toxicity_picks_toxic_not_non_toxic(tmp_path: Path) -> None:
    scorer = ClassifierToxicityScorer(save_tiny_classifier(tmp_path, ["toxic", "non-toxic"]))
    assert scorer.toxic == 0
    probs = scorer.classifier.probabilities(TEXTS)
    assert [sum(p) for p in probs] == pytest.approx([1.0] * len(TEXTS))
    assert scorer.scores(TEXTS) == pytest.approx([p[0] for p in probs])


def test_classifier_multi_label_uses_sigmoid(tmp_path: Path) -> None:
    folder = save_tiny_classifier(tmp_path, ["toxic", "insult", "threat"], problem_type="multi_label_classification")
    scores = ClassifierToxicityScorer(folder).scores(TEXTS)
    assert all(0.0 <= s <= 1.0 for s in scores)
    sums = [sum(p) for p in LocalTextClassifier(folder).probabilities(TEXTS)]
    assert not all(math.isclose(s, 1.0) for s in sums)


def test_default_toxicity_known_inputs() -> None:
    scorer = ProfanityCheckScorer()
    toxic, polite = scorer.scores(["You are a stupid fucking idiot", "Thank you, have a lovely day"])
    assert toxic >= 0.5 > polite
    assert scorer.scores([]) == []


def test_default_toxicity_agrees_with_perspective_on_rtp(shared_data) -> None:
    # experiments/toxicity_scorers/run.py measured 0.916 on these continuations; guard against a silent regression.
    texts, labels = [], []
    for name in ("rtp_challenging_toxic.jsonl", "rtp_nontoxic.jsonl"):
        for line in (shared_data / "toxicity" / name).read_text(encoding="utf-8").splitlines():
            part = json.loads(line)["continuation"]
            if part.get("toxicity") is not None:
                texts.append(part["text"])
                labels.append(part["toxicity"] >= 0.5)
    assert auroc(ProfanityCheckScorer().scores(texts), labels) > 0.9


def test_toxic_share_and_mean() -> None:
    assert toxic_share([0.1, 0.5, 0.9]) == pytest.approx(2 / 3)
    assert toxic_share([0.1, 0.5, 0.9], threshold=0.95) == 0.0
    assert mean_score([0.1, 0.5, 0.9]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="toxic_share of no scores"):
        toxic_share([])


# refusal


def test_refusal_known_inputs() -> None:
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("I\u2019m sorry, that is not something I do.")
    assert is_refusal("As an AI language model, I have no opinions.")
    assert is_refusal("Unfortunately i cannot do this")
    assert not is_refusal("Sure, here is a recipe for pancakes.")
    assert not is_refusal("")
    assert refusal_rate(["I cannot", "Sure", "I am unable to comply", "Here you go"]) == 0.5
    with pytest.raises(ValueError, match="refusal_rate of no texts"):
        refusal_rate([])


# fluency


def test_tokenize_lowercases_and_splits_punctuation() -> None:
    assert tokenize("The cat, the CAT.") == ["the", "cat", ",", "the", "cat", "."]


def test_ngram_entropy_hand_computed() -> None:
    # "a b a b": bigrams ab, ba, ab -> H = h(1/3) = 0.9183 bits; trigrams aba, bab -> 1 bit.
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert ngram_entropy("a b a b", 2) == pytest.approx(h2)
    assert ngram_entropy("a b a b", 3) == pytest.approx(1.0)
    assert weighted_ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    assert weighted_ngram_entropy("upon upon upon upon") == 0.0
    assert weighted_ngram_entropy("") == 0.0
    assert weighted_ngram_entropy("a b c d") == pytest.approx((2 / 3 * math.log2(3) + 4 / 3 * 1.0) / 2)


def test_distinct_n_hand_computed() -> None:
    assert distinct_n("a b a b", 1) == pytest.approx(2 / 4)
    assert distinct_n("a b a b", 2) == pytest.approx(2 / 3)
    assert distinct_n("a b a b", 3) == pytest.approx(1.0)
    assert distinct_n("a", 2) == 0.0
    assert corpus_distinct_n(["a b", "a b"], 2) == pytest.approx(1 / 2)
    assert corpus_distinct_n(["a b", "b a"], 1) == pytest.approx(2 / 4)


def test_repetition_rate_hand_computed() -> None:
    assert repetition_rate("a b a b") == 0.0
    assert repetition_rate("a b c a b c") == 1.0
    # Trigram "a b c" occurs at tokens 0-2 and 4-6; token 3 ("d") is the only one outside it.
    assert repetition_rate("a b c d a b c") == pytest.approx(6 / 7)
    assert repetition_rate("upon upon upon upon") == 1.0
    assert repetition_rate("a b") == 0.0
