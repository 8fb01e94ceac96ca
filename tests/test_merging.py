"""Merging vectors: linear sums and TIES checked against hand-computed values, refusals checked word for word."""

import re

import numpy as np
import pytest
import torch

from steerlab.merging import merge_linear, merge_ties
from steerlab.vector import IncompatibleVectorError, SteeringVector, VectorMeta, content_hash, same_model

HIDDEN = 5


def vec(directions: dict, *, name="tiny", fingerprint="fp1", hidden=HIDDEN, method="caa", task="sentiment"):
    meta = VectorMeta(
        model_name=name, hidden_size=hidden, num_layers=4, method=method, model_fingerprint=fingerprint, task=task
    )
    return SteeringVector({k: torch.tensor(v, dtype=torch.float32) for k, v in directions.items()}, meta)


# Three vectors on layers 1 and 2, values far apart so trimming has no ties.
A = {1: [3, -1, 0.5, -4, 2], 2: [2, 1, 0, 0, 0.5]}
B = {1: [-2, 5, 1, -1, 0.1], 2: [-2, 0, 3, 0, 0]}
C = {1: [1, -6, 0.2, 3, -0.3], 2: [0, 0, 0, 1, 4]}


def ties_reference(rows: np.ndarray, weights: np.ndarray, density: float) -> np.ndarray:
    """TIES written out coordinate by coordinate, independently of steerlab's tensor code."""
    k = max(1, int(density * rows.shape[1]))
    trimmed = np.zeros_like(rows)
    for i, row in enumerate(rows):
        keep = sorted(range(len(row)), key=lambda j: (-abs(row[j]), j))[:k]
        trimmed[i, keep] = row[keep] * weights[i]
    out = np.zeros(rows.shape[1], dtype=np.float64)
    for j in range(rows.shape[1]):
        elected = np.sign(trimmed[:, j].sum())
        agreeing = [i for i in range(len(rows)) if trimmed[i, j] != 0 and np.sign(trimmed[i, j]) == elected]
        if agreeing:
            out[j] = sum(trimmed[i, j] for i in agreeing) / sum(weights[i] for i in agreeing)
    return out


def reference_for(layer: int, weights, density) -> np.ndarray:
    rows = np.array([A[layer], B[layer], C[layer]], dtype=np.float64)
    return ties_reference(rows, np.array(weights, dtype=np.float64), density)


# ---- linear ---------------------------------------------------------------------------------------
def test_linear_is_the_weighted_sum():
    merged = merge_linear([vec(A), vec(B), vec(C)], [0.5, -1, 2])
    for layer in (1, 2):
        expected = 0.5 * np.array(A[layer]) - np.array(B[layer]) + 2 * np.array(C[layer])
        assert np.allclose(merged.directions[layer].numpy(), expected, rtol=0, atol=1e-6)
    assert merged.directions[1].tolist() == pytest.approx([5.5, -17.5, -0.35, 5.0, 0.3], abs=1e-6)


# ---- TIES -----------------------------------------------------------------------------------------
def test_ties_matches_the_hand_computed_result():
    merged = merge_ties([vec(A), vec(B), vec(C)], density=0.4)  # k = 2 of 5 values kept per vector
    # layer 1 trimmed: A [3,0,0,-4,0], B [-2,5,0,0,0], C [0,-6,0,3,0]; elected signs + - 0 - 0.
    assert merged.directions[1].tolist() == [3.0, -6.0, 0.0, -4.0, 0.0]
    # layer 2: +2 and -2 cancel at coordinate 0, so no sign is elected there.
    assert merged.directions[2].tolist() == [0.0, 1.0, 3.0, 1.0, 4.0]
    for layer in (1, 2):
        assert np.allclose(merged.directions[layer].numpy(), reference_for(layer, [1, 1, 1], 0.4))


def test_ties_weights_scale_before_the_sign_election():
    merged = merge_ties([vec(A), vec(B), vec(C)], weights=[1, 2, 1], density=0.4)
    # B counts twice: coordinate 0 elects -, coordinate 1 elects +; the mean is weighted.
    assert merged.directions[1].tolist() == [-2.0, 5.0, 0.0, -4.0, 0.0]
    assert np.allclose(merged.directions[1].numpy(), reference_for(1, [1, 2, 1], 0.4))


@pytest.mark.parametrize("density", [0.2, 0.6, 1.0])
def test_ties_matches_the_reference_on_random_vectors(density):
    gen = np.random.default_rng(7)
    rows = gen.normal(size=(4, 6)).astype(np.float32)
    weights = [0.5, 1.0, 2.0, 1.5]
    vectors = [vec({3: row}, hidden=6) for row in rows]
    merged = merge_ties(vectors, weights=weights, density=density)
    expected = ties_reference(rows.astype(np.float64), np.array(weights), density)
    assert np.allclose(merged.directions[3].numpy(), expected, atol=1e-6)


def test_ties_meta_records_inputs_weights_and_density():
    inputs = [vec(A, method="caa"), vec(B, method="pca", task="formality")]
    merged = merge_ties(inputs, density=0.4)
    assert merged.meta.method == "merge-ties"
    assert merged.meta.config == {
        "inputs": [
            {"method": "caa", "task": "sentiment", "sha256": content_hash(inputs[0])},
            {"method": "pca", "task": "formality", "sha256": content_hash(inputs[1])},
        ],
        "weights": [1.0, 1.0],
        "density": 0.4,
        "layers": [1, 2],
    }
    assert merged.meta.task == ""  # the inputs disagree
    assert (merged.meta.model_name, merged.meta.model_fingerprint, merged.meta.hidden_size) == ("tiny", "fp1", HIDDEN)


def test_linear_meta_keeps_a_shared_task():
    merged = merge_linear([vec(A), vec(B)], [1, 1])
    assert merged.meta.method == "merge-linear"
    assert merged.meta.task == "sentiment"
    assert merged.meta.config["weights"] == [1.0, 1.0]
    assert len(merged.meta.config["inputs"][0]["sha256"]) == 64


def test_content_hash_sees_layer_indices_and_values():
    assert content_hash(vec(A)) == content_hash(vec(A, name="other", method="pca"))
    assert content_hash(vec(A)) != content_hash(vec({1: A[1], 3: A[2]}))
    assert content_hash(vec(A)) != content_hash(vec(B))


# ---- refusals -------------------------------------------------------------------------------------
def refused(message: str):
    return pytest.raises(IncompatibleVectorError, match=f"^{re.escape(message)}$")


def test_refuses_another_hidden_size():
    other = vec({1: [0.0] * 6, 2: [0.0] * 6}, name="wide", hidden=6)
    with refused(
        "cannot merge vectors of different models: vector 0 is for tiny (hidden size 5, fingerprint fp1), "
        "vector 1 for wide (hidden size 6, fingerprint fp1)"
    ):
        merge_linear([vec(A), other], [1, 1])


def test_refuses_another_fingerprint():
    with refused(
        "cannot merge vectors of different models: vector 0 is for tiny (hidden size 5, fingerprint fp1), "
        "vector 2 for tiny-ft (hidden size 5, fingerprint fp2)"
    ):
        merge_ties([vec(A), vec(B), vec(C, name="tiny-ft", fingerprint="fp2")])


def test_refuses_another_name_without_fingerprints():
    with refused(
        "cannot merge vectors of different models: vector 0 is for tiny (hidden size 5), "
        "vector 1 for small (hidden size 5)"
    ):
        merge_linear([vec(A, fingerprint=""), vec(B, name="small", fingerprint="")], [1, 1])


def test_same_fingerprint_under_another_name_is_the_same_model():
    merged = merge_linear([vec(A), vec(B, name="./models/tiny")], [1, 1])
    assert merged.layers == [1, 2]


@pytest.mark.parametrize(
    ("other", "same"),
    [
        ({"name": "./models/tiny"}, True),  # same fingerprint, another name: the same model
        ({"name": "tiny-ft", "fingerprint": "fp2"}, False),
        ({"name": "small", "fingerprint": ""}, False),  # no fingerprint on one side: names decide
        ({"fingerprint": ""}, True),
    ],
)
def test_merge_and_arithmetic_share_one_same_model_rule(other, same):
    """`a + b` and `steerlab vector merge` agree on every pair of vectors: both use vector.same_model."""
    a, b = vec(A), vec(B, **other)
    assert same_model(a.meta, b.meta) is same
    if same:
        torch.testing.assert_close((a + b).directions[1], merge_linear([a, b], [1, 1]).directions[1])
        return
    with pytest.raises(IncompatibleVectorError):
        a + b
    with pytest.raises(IncompatibleVectorError):
        merge_linear([a, b], [1, 1])


def test_refuses_different_layer_sets():
    with refused(
        "cannot merge vectors with different layers: vector 0 has layers [1, 2], "
        "vector 1 has layers [1, 3]; pass layers=[...] to merge only some"
    ):
        merge_linear([vec(A), vec({1: B[1], 3: B[2]})], [1, 1])


def test_layers_argument_keeps_shared_layers():
    merged = merge_linear([vec(A), vec({1: B[1], 3: B[2]})], [1, 1], layers=[1])
    assert merged.layers == [1]
    assert merged.meta.config["layers"] == [1]


def test_layers_argument_needs_every_vector_to_have_them():
    with refused("vector 1 has no direction for layer 2; it has layers [1, 3]"):
        merge_ties([vec(A), vec({1: B[1], 3: B[2]})], layers=[1, 2])


def test_refuses_bad_weights_and_density():
    with pytest.raises(ValueError, match=re.escape("got 1 weights for 2 vectors; give one weight per vector")):
        merge_linear([vec(A), vec(B)], [1])
    with pytest.raises(
        ValueError,
        match=re.escape("TIES weights must be positive, got [1.0, -1.0]; negate a vector (-v) to subtract it"),
    ):
        merge_ties([vec(A), vec(B)], weights=[1, -1])
    with pytest.raises(
        ValueError, match=re.escape("density is the fraction of values kept per layer, in (0, 1]; got 0")
    ):
        merge_ties([vec(A), vec(B)], density=0)
    with pytest.raises(ValueError, match="nothing to merge"):
        merge_linear([], [])
