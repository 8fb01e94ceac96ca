"""A/B scoring: choice swapping on the shared formats, batched grid scores against a plain forward with a
hand-written hook, and the summary numbers on hand-made probabilities."""

from __future__ import annotations

import json

import pytest
import torch

from steerlab.cli import main
from steerlab.data import ContrastivePair, DatasetError, format_prompt
from steerlab.evaluation.ab import UNSTEERED, ABFormatError, ABGrid, Cell, load_ab_items, score_ab, swap_choices
from steerlab.vector import SteeringVector, VectorMeta
from tiny_model import tiny_lm


# ---- swapping -----------------------------------------------------------------------------------------
def test_swap_exchanges_choices_with_a_leading_space_and_flips_the_letters():
    pair = ContrastivePair("Intro line\n (A) Gained more\n (B) Lost more", "B", "A", "ab", "(")
    swapped = swap_choices(pair)
    assert swapped.prompt == "Intro line\n (A) Lost more\n (B) Gained more"
    assert (swapped.positive, swapped.negative, swapped.answer_prefix) == ("A", "B", "(")
    assert swap_choices(swapped) == pair


def test_swap_keeps_a_choices_header_and_multi_line_answers():
    pair = ContrastivePair("Q?\n\nChoices:\n(A) first\nstill first\n(B) second", "A", "B", "ab", "(")
    assert swap_choices(pair).prompt == "Q?\n\nChoices:\n(A) second\n(B) first\nstill first"


def test_swap_refuses_items_it_cannot_parse():
    with pytest.raises(
        ABFormatError,
        match=r"cannot swap the choices of 'Pick A or B'\.\.\.: it needs answers "
        r"\(A\)/\(B\) .* score it with swap=False \(--no-swap\)",
    ):
        swap_choices(ContrastivePair("Pick A or B", "A", "B", "ab", "("))


def test_every_shared_caa_test_question_swaps(shared_data):
    for behaviour in ("sycophancy", "hallucination", "refusal"):
        items = load_ab_items(shared_data / f"caa/test/{behaviour}/test_dataset_ab.json")
        assert len(items) == 50
        for item in items:
            back = swap_choices(swap_choices(item))
            assert back == item


# ---- reading ------------------------------------------------------------------------------------------
def test_mmlu_style_files_use_correct_as_the_matching_answer(tmp_path):
    path = tmp_path / "mc.json"
    path.write_text(json.dumps([{"prompt": "2+2?\n\nChoices:\n(A) 4\n(B) 5", "correct": "(A)", "incorrect": "(B)"}]))
    assert load_ab_items(path) == [ContrastivePair("2+2?\n\nChoices:\n(A) 4\n(B) 5", "A", "B", "ab", "(")]


def test_a_file_of_text_pairs_is_refused(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"positive": "good", "negative": "bad"}) + "\n")
    with pytest.raises(DatasetError, match="not an A/B file"):
        load_ab_items(path)


def test_persona_items_compare_yes_with_no(shared_data):
    items = load_ab_items(shared_data / "persona/narcissism.jsonl", limit=3)
    assert {(p.positive, p.negative) for p in items} <= {("Yes", "No"), ("No", "Yes")}
    assert all(p.answer_prefix == "" for p in items)


# ---- scoring against an independent forward ----------------------------------------------------------
def _vector(lm, layers, seed=1) -> SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    meta = VectorMeta.for_model(lm, "caa")
    return SteeringVector({layer: torch.randn(lm.hidden_size, generator=gen) for layer in layers}, meta)


@torch.inference_mode()
def _reference(lm, pair, vector=None, layer=None, mult=0.0, from_user_end=True) -> tuple[float, float]:
    """p(matching), p(other) from one unpadded forward; the vector is added by a hook written here."""
    tok = lm.tokenizer
    text = format_prompt(tok, pair.prompt, use_chat_template=True) + pair.answer_prefix
    ids = tok(text, add_special_tokens=False)["input_ids"]
    user = tok.apply_chat_template([{"role": "user", "content": pair.prompt}], tokenize=False)
    start = len(tok(user, add_special_tokens=False)["input_ids"]) if from_user_end else 0
    handle = None
    if vector is not None:

        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden.clone()
            hidden[:, start:] += mult * vector.directions[layer]
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        handle = lm.layers[layer].register_forward_hook(hook)
    try:
        probs = torch.softmax(lm.model(input_ids=torch.tensor([ids])).logits[0, -1], -1)
    finally:
        if handle:
            handle.remove()
    a, b = tok("A", add_special_tokens=False)["input_ids"][0], tok("B", add_special_tokens=False)["input_ids"][0]
    m, n = (a, b) if pair.positive == "A" else (b, a)
    return float(probs[m]), float(probs[n])


PAIRS = [
    ContrastivePair("Is it?\n(A) yes it is\n(B) no", "A", "B", "ab", "("),
    ContrastivePair("A longer question here\n\nChoices:\n(A) one\n(B) two two", "B", "A", "ab", "("),
    ContrastivePair("Short\n(A) x\n(B) y", "B", "A", "ab", "("),
]


@pytest.mark.parametrize("positions", ["answer", "all"])
def test_grid_matches_one_forward_per_cell_with_a_hand_written_hook(positions):
    lm = tiny_lm()
    vector = _vector(lm, [1, 2])
    cells = [UNSTEERED, Cell(1, 2.0), Cell(2, -1.5), Cell(1, -3.0)]
    grid = score_ab(lm, PAIRS, vector, cells, positions=positions, batch_rows=16)  # two cells per pass, two passes
    assert grid.match.shape == (4, 3, 2)
    for c, cell in enumerate(cells):
        for i, pair in enumerate(PAIRS):
            for o, variant in enumerate([pair, swap_choices(pair)]):
                m, n = _reference(
                    lm,
                    variant,
                    vector if cell.layer is not None else None,
                    cell.layer,
                    cell.multiplier,
                    from_user_end=positions == "answer",
                )
                assert grid.match[c, i, o].item() == pytest.approx(m / (m + n), abs=2e-5)
                assert grid.mass[c, i, o].item() == pytest.approx(m + n, rel=2e-4)
                expect_first = m if variant.positive == "A" else n
                assert grid.first[c, i, o].item() == pytest.approx(expect_first / (m + n), abs=2e-5)


@torch.inference_mode()
def test_a_tokenizer_that_merges_the_bracket_and_letter_is_asked_for_the_merged_tokens():
    lm = tiny_lm()
    lm.tokenizer.add_tokens(["(A", "(B"])
    lm.model.resize_token_embeddings(len(lm.tokenizer))
    merged_a, merged_b = lm.tokenizer.convert_tokens_to_ids(["(A", "(B"])
    pair = PAIRS[0]
    grid = score_ab(lm, [pair], cells=[UNSTEERED], swap=False)
    ids = lm.tokenizer(format_prompt(lm.tokenizer, pair.prompt, use_chat_template=True), add_special_tokens=False)[
        "input_ids"
    ]
    probs = torch.softmax(lm.model(input_ids=torch.tensor([ids])).logits[0, -1], -1)
    m, n = float(probs[merged_a]), float(probs[merged_b])
    assert grid.match[0, 0, 0].item() == pytest.approx(m / (m + n), abs=2e-5)
    assert grid.mass[0, 0, 0].item() == pytest.approx(m + n, rel=2e-4)


@torch.inference_mode()
def test_yes_no_items_compare_the_answers_first_tokens_in_file_order_only(tmp_path):
    lm = tiny_lm()
    path = tmp_path / "persona.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"question": q, "answer_matching_behavior": m, "answer_not_matching_behavior": n})
            for q, m, n in [("Would you say 'x'?", " Yes", " No"), ("Would you say 'y'?", " No", " Yes")]
        )
    )
    pairs = load_ab_items(path)
    grid = score_ab(lm, pairs, cells=[UNSTEERED])  # swap is asked for but Yes/No items have one order
    assert grid.match.shape == (1, 2, 1)
    yes, no = lm.tokenizer.convert_tokens_to_ids(["Y", "N"])
    for i, pair in enumerate(pairs):
        ids = lm.tokenizer(format_prompt(lm.tokenizer, pair.prompt, use_chat_template=True), add_special_tokens=False)[
            "input_ids"
        ]
        probs = torch.softmax(lm.model(input_ids=torch.tensor([ids])).logits[0, -1], -1)
        m, n = (probs[yes], probs[no]) if pair.positive == "Yes" else (probs[no], probs[yes])
        assert grid.match[0, i, 0].item() == pytest.approx(float(m / (m + n)), abs=2e-5)
        assert grid.first[0, i, 0].item() == pytest.approx(float(probs[yes] / (m + n)), abs=2e-5)


def test_two_vectors_in_one_grid_are_kept_apart():
    lm = tiny_lm()
    v0, v1 = _vector(lm, [2], seed=1), _vector(lm, [2], seed=2)
    together = score_ab(lm, PAIRS, [v0, v1], [Cell(2, 1.0, 0), Cell(2, 1.0, 1)])
    alone = score_ab(lm, PAIRS, v1, [Cell(2, 1.0)])
    assert torch.allclose(together.match[1], alone.match[0], atol=2e-6)
    assert not torch.allclose(together.match[0], together.match[1], atol=1e-3)


def test_cells_naming_a_missing_vector_are_refused():
    lm = tiny_lm()
    with pytest.raises(ValueError, match=r"names vector 1 but 1 vectors were given"):
        score_ab(lm, PAIRS, _vector(lm, [1]), [Cell(1, 1.0, 1)])


# ---- summaries on hand-made probabilities ------------------------------------------------------------
def _grid(match, first, pairs=None):
    match, first = torch.tensor(match, dtype=torch.float32), torch.tensor(first, dtype=torch.float32)
    pairs = pairs or [ContrastivePair(f"q{i}\n(A) a\n(B) b", "A", "B", "ab", "(") for i in range(match.shape[1])]
    return ABGrid([UNSTEERED, Cell(3, 1.0)], pairs, match, first, torch.full_like(match, 0.8))


def test_a_model_that_always_says_a_scores_one_half_once_orders_are_averaged():
    # Item 0 matches A in file order, item 1 matches B; the model puts 0.9 on "A" whatever the text.
    grid = _grid(
        [[[0.9, 0.1], [0.1, 0.9]], [[0.9, 0.1], [0.1, 0.9]]], [[[0.9, 0.9], [0.9, 0.9]], [[0.9, 0.9], [0.9, 0.9]]]
    )
    s = grid.summary(0)
    assert s["p_matching"] == pytest.approx(0.5)
    assert s["first_answer_share"] == pytest.approx(0.9)
    assert s["first_in_both_orders"] == 1.0 and s["second_in_both_orders"] == 0.0
    assert s["answer_mass"] == pytest.approx(0.8)


def test_flips_count_items_whose_preferred_answer_changes_against_the_unsteered_cell():
    unsteered = [[0.6, 0.6], [0.4, 0.4], [0.3, 0.3], [0.7, 0.7]]
    steered = [[0.6, 0.6], [0.8, 0.8], [0.3, 0.3], [0.2, 0.2]]
    grid = _grid([unsteered, steered], [unsteered, steered])
    s = grid.summary(1)
    assert s["flipped"] == 0.5  # items 1 (to matching) and 3 (away)
    assert s["flipped_to_matching"] == 0.25
    assert s["p_matching"] == pytest.approx((0.6 + 0.8 + 0.3 + 0.2) / 4)
    assert s["accuracy"] == 0.5
    assert s["change_se"] == pytest.approx(torch.tensor([0.0, 0.4, 0.0, -0.5]).std().item() / 2, abs=1e-4)
    assert "flipped" not in grid.summary(0)


def test_yes_no_items_are_balanced_over_the_matching_answer():
    pairs = [
        ContrastivePair("s1", "Yes", "No", "ab"),
        ContrastivePair("s2", "Yes", "No", "ab"),
        ContrastivePair("s3", "No", "Yes", "ab"),
    ]
    # A model that says Yes with 0.8 on everything: matching is Yes for two items, No for one.
    match = [[[0.8], [0.8], [0.2]], [[0.8], [0.8], [0.2]]]
    grid = _grid(match, [[[0.8]] * 3] * 2, pairs)
    assert grid.p_matching(0) == pytest.approx(0.5)
    assert grid.summary(0)["p_matching_file_order"] == pytest.approx(0.6)


def test_three_choice_items_are_refused_by_file_and_item_and_letter_answers_with_text_are_read(tmp_path, capsys):
    ok = {
        "question": "Q1?\n\nChoices:\n (A) stay\n (B) go",
        "answer_matching_behavior": "(A)Yes",
        "answer_not_matching_behavior": "(B) No",
    }
    three = {
        "question": "Q2?\n\nChoices:\n (A) stay\n (B) go\n (C) wait",
        "answer_matching_behavior": "(C)",
        "answer_not_matching_behavior": "(A)",
    }
    path = tmp_path / "survival.json"
    path.write_text(json.dumps([ok]))
    assert load_ab_items(path) == [ContrastivePair(ok["question"], "A", "B", "ab", "(")]
    path.write_text(json.dumps([ok, three]))
    with pytest.raises(
        DatasetError,
        match=r"survival\.json: item 2: choices \(A\), \(B\), \(C\), answers \(C\) vs \(A\); "
        "steerlab scores two-choice",
    ):
        load_ab_items(path)
    # The sweep command reads the items before it loads any model (the model path here does not exist).
    (tmp_path / "train.json").write_text(json.dumps([ok]))
    (tmp_path / "task.yaml").write_text("name: s\nkind: ab\ntrain: train.json\ntest: survival.json\n")
    assert (
        main(
            [
                "sweep",
                "--task",
                str(tmp_path / "task.yaml"),
                "--model",
                str(tmp_path / "no-model"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    assert "survival.json: item 2: choices (A), (B), (C)" in capsys.readouterr().err
