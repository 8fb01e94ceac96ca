"""Vector diagnostics: held-out numbers against independent computations, verdicts, and the real SST-2 check."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from steerlab.activations import PairActivations
from steerlab.data import pairs_from_texts
from steerlab.evaluation.diagnose import diagnose, diagnose_activations, format_diagnosis, split_indices

NUM_LAYERS = 10


def synthetic(n: int = 40, hidden: int = 8, signal: float = 4.0, seed: int = 0) -> PairActivations:
    """Pairs whose sides differ along one axis by `signal` at layers 3+ and only by noise at layers 0-2."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, NUM_LAYERS, hidden, generator=g) + 5
    axis = torch.zeros(hidden)
    axis[0] = 1.0
    strength = torch.tensor([0.0] * 3 + [signal] * (NUM_LAYERS - 3))[None, :, None]
    pos = base + strength * axis / 2 + torch.randn(n, NUM_LAYERS, hidden, generator=g)
    neg = base - strength * axis / 2 + torch.randn(n, NUM_LAYERS, hidden, generator=g)
    return PairActivations(list(range(NUM_LAYERS)), pos, neg)


def swapped(acts: PairActivations, seed: int = 1) -> PairActivations:
    """The same activations with the sides of a random half of the pairs exchanged: labels shuffled."""
    swap = (torch.rand(acts.positive.shape[0], generator=torch.Generator().manual_seed(seed)) < 0.5)[:, None, None]
    return PairActivations(
        acts.layers, torch.where(swap, acts.negative, acts.positive), torch.where(swap, acts.positive, acts.negative)
    )


def test_numbers_match_an_independent_computation():
    acts = synthetic()
    diagnosis = diagnose_activations(acts, NUM_LAYERS, holdout=0.25, seed=3)
    train, held = split_indices(40, 0.25, 3)
    assert len(held) == 10 and sorted(train + held) == list(range(40))
    pos, neg = acts.positive.double().numpy(), acts.negative.double().numpy()
    for i, row in enumerate(diagnosis.layers):
        d = (pos[train, i] - neg[train, i]).mean(0)
        p, q = pos[held, i] @ d, neg[held, i] @ d
        wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in p for b in q)
        assert row.auroc == pytest.approx(wins / (len(p) * len(q)))
        assert row.pair_accuracy == pytest.approx(np.mean(p > q))
        diffs = pos[held, i] - neg[held, i]
        cos = diffs @ d / (np.linalg.norm(diffs, axis=1) * np.linalg.norm(d))
        assert row.consistency == pytest.approx(cos.mean(), abs=1e-9)
        full = np.linalg.norm((pos[:, i] - neg[:, i]).mean(0))
        residual = np.linalg.norm(np.concatenate([pos[:, i], neg[:, i]]), axis=-1).mean()
        assert row.vector_norm == pytest.approx(full)
        assert row.relative_norm == pytest.approx(full / residual)


def test_separating_pairs_get_inner_layers_suggested():
    diagnosis = diagnose_activations(synthetic(), NUM_LAYERS)
    assert diagnosis.status == "separates"
    assert all(diagnosis.layer(layer).auroc > 0.95 for layer in range(3, NUM_LAYERS))
    # The first and last 10% of the stack (layers 0 and 9 of 10) are never suggested.
    assert len(diagnosis.suggested_layers) == 3 and all(3 <= layer <= 8 for layer in diagnosis.suggested_layers)
    assert diagnosis.verdict.startswith("The pairs separate on held-out data")
    assert "Layers worth trying: " + ", ".join(map(str, diagnosis.suggested_layers)) in diagnosis.verdict


def test_shuffled_labels_do_not_separate():
    diagnosis = diagnose_activations(swapped(synthetic(n=200)), NUM_LAYERS)
    assert diagnosis.status == "none" and diagnosis.suggested_layers == []
    assert max(row.auroc for row in diagnosis.layers) < 0.7
    assert diagnosis.verdict.startswith("The pairs do not isolate a direction")


def test_weak_separation_is_called_weak():
    diagnosis = diagnose_activations(synthetic(n=200, signal=1.0), NUM_LAYERS)
    assert diagnosis.status == "weak"
    assert diagnosis.suggested_layers == [max(diagnosis.layers[1:-1], key=lambda r: (r.auroc, r.consistency)).layer]


def test_few_held_out_pairs_are_flagged_and_too_few_refused():
    assert "Only 3 held-out pairs" in diagnose_activations(synthetic(n=12), NUM_LAYERS).verdict
    with pytest.raises(
        ValueError,
        match=r"^5 pairs are too few to diagnose with holdout 0.25: both the train and "
        r"the held-out part need at least 2 pairs \(use at least 8 pairs",
    ):
        diagnose_activations(synthetic(n=5), NUM_LAYERS)


def test_dict_form_and_table():
    diagnosis = diagnose_activations(synthetic(), NUM_LAYERS)
    d = diagnosis.to_dict()
    assert d["status"] == "separates" and d["n_train"] == 30 and d["n_heldout"] == 10
    assert [r["layer"] for r in d["layers"]] == list(range(NUM_LAYERS))
    table = format_diagnosis(d)
    assert table.splitlines()[0] == "held-out diagnosis: 30 train / 10 held-out pairs (seed 0)"
    assert sum(line.endswith("<-") for line in table.splitlines()) == 3
    assert table.endswith(diagnosis.verdict)


@pytest.mark.real_model
def test_sst2_separates_on_smollm2_and_shuffled_labels_do_not(smollm2, shared_data):
    """200 short SST-2 sentences of each label: a middle layer separates held-out pairs; swapped sides do not."""
    with (shared_data / "sentiment" / "sst2_dev.tsv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    short = [r for r in rows if len(r["sentence"].split()) <= 20]
    pos = [r["sentence"].strip() for r in short if r["label"] == "1"][:200]
    neg = [r["sentence"].strip() for r in short if r["label"] == "0"][:200]
    diagnosis, acts = diagnose(smollm2, pairs_from_texts(pos, neg, name="sst2"), layers=[6, 15])
    assert diagnosis.layer(15).auroc > 0.8 and diagnosis.layer(15).consistency > 0.1
    assert diagnosis.status == "separates" and 15 in diagnosis.suggested_layers
    shuffled = diagnose_activations(swapped(acts), smollm2.num_layers)
    assert all(row.auroc < 0.7 and abs(row.consistency) < 0.05 for row in shuffled.layers)
    assert shuffled.status == "none"


def test_pair_accuracy_on_yes_no_pairs_is_balanced_over_the_wanted_answer():
    """Activations that only encode the word: unbalanced pair accuracy is the share answered "Yes"; balanced is 0.5."""
    gen = torch.Generator().manual_seed(0)
    n, hidden = 40, 8
    answers = ["Yes" if i % 5 < 3 else "No" for i in range(n)]  # 60% of pairs want " Yes"
    word = {"Yes": torch.zeros(hidden).index_fill_(0, torch.tensor([0]), 5.0)}
    word["No"] = -word["Yes"]
    noise = lambda: 0.1 * torch.randn(n, 1, hidden, generator=gen)  # noqa: E731
    pos = torch.stack([word[a] for a in answers])[:, None] + noise()
    neg = torch.stack([word["No" if a == "Yes" else "Yes"] for a in answers])[:, None] + noise()
    acts = PairActivations([3], pos, neg)
    _, held = split_indices(n, 0.25, 0)
    share_yes = sum(answers[j] == "Yes" for j in held) / len(held)
    assert diagnose_activations(acts, NUM_LAYERS).layers[0].pair_accuracy == pytest.approx(share_yes)
    assert diagnose_activations(acts, NUM_LAYERS, groups=answers).layers[0].pair_accuracy == pytest.approx(0.5)
