"""On the real SmolLM2: a sentiment CAA vector built from SST-2 moves VADER sentiment both ways."""

from __future__ import annotations

import csv
import json

import pytest

from steerlab.data import pairs_from_texts
from steerlab.evaluation.sentiment import vader_scores
from steerlab.generation import GenerationConfig, generate
from steerlab.methods.caa import CAAConfig, fit
from steerlab.steering import SteeringSpec

LAYER = 9
# Norm-relative strength: the added vector is 20% of the layer's typical residual norm. Measured here:
# readable continuations, VADER about +0.36 / +0.18 / -0.03 at +/0/- on 30 prompts, 30 tokens.
RELATIVE_STRENGTH = 0.2


@pytest.mark.real_model
def test_sst2_sentiment_vector_moves_vader_both_ways(smollm2, shared_data):
    with open(shared_data / "sentiment" / "sst2_dev.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    positive = [r["sentence"] for r in rows if r["label"] == "1"][:100]
    negative = [r["sentence"] for r in rows if r["label"] == "0"][:100]
    vector = fit(
        smollm2, pairs_from_texts(positive, negative, name="sst2_dev"), CAAConfig(layers=[LAYER]), task="sentiment"
    )
    multiplier = RELATIVE_STRENGTH * vector.meta.residual_norms[str(LAYER)] / vector.norms()[LAYER]

    with open(shared_data / "sentiment" / "neutral_prompts.jsonl") as f:
        prompts = [json.loads(line)["prompt"]["text"] for line, _ in zip(f, range(30), strict=False)]
    n = len(prompts)
    spec = SteeringSpec(vector, [multiplier] * n + [0.0] * n + [-multiplier] * n, [LAYER])
    results = generate(
        smollm2,
        prompts * 3,
        spec,
        config=GenerationConfig(max_new_tokens=30),
        batch_size=3 * n,
        use_chat_template=False,
        task="sentiment",
    )
    plus, zero, minus = (sum(vader_scores([r.steered for r in results[i * n : (i + 1) * n]])) / n for i in range(3))
    print(
        f"\nSST-2 CAA at layer {LAYER}, multiplier +/-{multiplier:.2f}: VADER + {plus:.3f}, 0 {zero:.3f}, - {minus:.3f}"
    )
    assert plus > zero > minus


@pytest.mark.real_model
def test_refusal_ab_vector_report(smollm2, shared_data):
    """Print p(matching) at -1/0/+1 for a refusal vector (no direction asserted: SmolLM2 answers at chance)."""
    from steerlab.data import load_pairs
    from steerlab.evaluation.ab import Cell, load_ab_items, score_ab

    train = load_pairs(shared_data / "caa" / "generate" / "refusal" / "generate_dataset.json")
    vector = fit(smollm2, train.subset(range(64)), CAAConfig(layers=[15]), task="refusal")
    items = load_ab_items(shared_data / "caa" / "test" / "refusal" / "test_dataset_ab.json")
    cells = [Cell(), Cell(15, -1.0), Cell(15, 1.0)]
    grid = score_ab(smollm2, items, vector, cells, task="refusal")
    summaries = [grid.summary(c) for c in range(len(cells))]
    print(
        "\nrefusal A/B, layer 15, 64 train pairs, 50 test items: "
        + ", ".join(
            f"x{m:+.0f}: p(matching) {s['p_matching']:.3f} (file order {s['p_matching_file_order']:.3f})"
            for m, s in zip([0, -1, 1], summaries, strict=False)
        )
        + f"; unsteered prefers the first answer in both orders on {summaries[0]['first_in_both_orders']:.0%}"
    )
    assert all(0.0 <= s["p_matching"] <= 1.0 and s["answer_mass"] > 0.0 for s in summaries)
