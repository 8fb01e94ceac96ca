"""A/B behaviour probability as in the CAA paper, with the choices swapped to cancel the model's letter bias.

The model reads a question (which lists "(A) ..." and "(B) ...") in its chat template plus "(", and
we compare the next-token probabilities of the two answers: p(matching) / (p(A) + p(B)). Small models
prefer one letter whatever it says, so each question is also scored with its two choices swapped (the
matching letter flips) and the two orders are averaged. Yes/No items (persona sets) have no order to
swap; their debiased score averages the items whose matching answer is "Yes" and those where it is
"No", which cancels a constant yes-bias the same way.

A grid of steering cells (vector, layer, multiplier) is scored in a few batched passes. With
positions="answer" (the default) the question runs once, unsteered, per (question, order) and its KV
cache serves every cell; only the tokens after the user's turn (the assistant-turn start and "(") are
steered, as CAA's code steers the positions after the instruction. positions="all" also steers the
question's tokens; it needs a full forward per cell and row.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import torch

from ..activations import split_at_divergence
from ..batching import PrefixCache, pad, positions_from_mask, run_prefix
from ..data import ContrastivePair, DatasetError, load_pairs, split_ab_answers
from ..errors import SteerlabError, UsageError
from ..models import LoadedModel
from ..steering import SpecSteering, SteeringSpec
from ..textio import loads, read_text
from ..vector import SteeringVector

POSITIONS = ("answer", "all")
_CHOICE_LINE = re.compile(r"^[ \t]*\(([A-Z])\) ", re.M)
_CHOICES = re.compile(r"^(?P<head>.*\n)(?P<ia>[ \t]*)\(A\) (?P<a>.*?)\n(?P<ib>[ \t]*)\(B\) (?P<b>.*)$", re.S)


class ABFormatError(SteerlabError, ValueError):
    """An A/B item cannot be scored as asked; the message names the item and the fix."""


@dataclass(frozen=True)
class Cell:
    """One setting of a grid: `multiplier` times vector number `vector` added at `layer`; layer None is unsteered."""

    layer: int | None = None
    multiplier: float = 0.0
    vector: int = 0


UNSTEERED = Cell()


# ---- items --------------------------------------------------------------------------------------------


def load_ab_items(path: str | Path, limit: int | None = None) -> list[ContrastivePair]:
    """A/B items from a CAA test/generate file, a persona .jsonl, or the CAA MMLU/TruthfulQA files (correct = matching)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    text = read_text(path, DatasetError)
    if text.lstrip().startswith("["):
        records = loads(text, str(path), DatasetError)
    else:
        records = [loads(x, str(path), DatasetError, line=i) for i, x in enumerate(text.split("\n"), 1) if x.strip()]
    if records and isinstance(records[0], dict) and {"prompt", "correct"} <= set(records[0]):
        pairs = []
        for i, r in enumerate(records, 1):
            fields = [r.get(k) for k in ("prompt", "correct", "incorrect")] if isinstance(r, dict) else [None]
            if not all(isinstance(f, str) and f.strip() for f in fields):
                raise DatasetError(f"{path}: item {i}: needs 'prompt', 'correct' and 'incorrect' strings")
            prompt, correct, incorrect = cast(list[str], fields)  # checked just above
            pos, neg, prefix = split_ab_answers(correct, incorrect)
            pairs.append(ContrastivePair(prompt, pos, neg, "ab", prefix))
    else:
        pairs = load_pairs(path).pairs
        if pairs[0].kind != "ab":
            raise DatasetError(
                f"{path}: not an A/B file (needs question / answer_matching_behavior / answer_not_matching_behavior)"
            )
    check_two_choices(path, pairs)
    return pairs[:limit] if limit is not None else pairs


def check_two_choices(path: str | Path, pairs: Sequence[ContrastivePair]) -> None:
    """Refuse, naming the file and item, lettered items that are not two-choice (A)/(B): they cannot be
    scored in both orders, and a third choice makes p(A)/(p(A)+p(B)) ignore where the model's answer went."""
    for i, pair in enumerate(pairs, 1):
        if pair.answer_prefix != "(":
            continue
        letters = _CHOICE_LINE.findall(pair.prompt)
        if len(letters) > 2 or not is_lettered(pair):
            listed = ", ".join(f"({x})" for x in letters) or "none on their own lines"
            raise DatasetError(
                f"{path}: item {i}: choices {listed}, answers ({pair.positive}) vs ({pair.negative}); "
                "steerlab scores two-choice (A)/(B) items in both orders: drop the item or rewrite it "
                "with two choices"
            )


def is_lettered(pair: ContrastivePair) -> bool:
    return {pair.positive, pair.negative} == {"A", "B"}


def swap_choices(pair: ContrastivePair) -> ContrastivePair:
    """The same question with choices (A) and (B) exchanged, so the matching answer's letter flips."""
    match = _CHOICES.match(pair.prompt)
    if not is_lettered(pair) or match is None:
        raise ABFormatError(
            f"cannot swap the choices of {pair.prompt[:60]!r}...: it needs answers (A)/(B) and choices on lines "
            "starting '(A) ' then '(B) ' at the end of the question; score it with swap=False (--no-swap)"
        )
    g = match.groupdict()
    question = f"{g['head']}{g['ia']}(A) {g['b']}\n{g['ib']}(B) {g['a']}"
    return replace(pair, prompt=question, positive=pair.negative, negative=pair.positive)


def check_ab_items(pairs: Sequence[ContrastivePair], swap: bool = True, source: str = "") -> None:
    """Refuse, before any model work, items score_ab could not score as asked: lettered and unlettered items
    mixed, or (when `swap`) lettered items whose choices cannot be swapped. `source` names their file."""
    lettered = [is_lettered(p) for p in pairs]
    where = f"{source}: " if source else ""
    if swap and any(lettered) and not all(lettered):
        raise ABFormatError(f"{where}some items have answers (A)/(B) and some do not; score one kind at a time")
    if swap and all(lettered):
        for i, pair in enumerate(pairs, 1):
            if _CHOICES.match(pair.prompt) is None:
                raise ABFormatError(
                    f"{where}item {i}: cannot swap the choices of {pair.prompt[:60]!r}: they must be the last two "
                    "lines of the question, starting '(A) ' and '(B) ' (a space after the letter); rewrite them "
                    "or score without swapping (--no-swap)"
                )


def first_answer(pair: ContrastivePair) -> str:
    """The answer whose share measures answer bias: "A" for lettered items, "Yes" for Yes/No, else the matching one."""
    if is_lettered(pair):
        return "A"
    if {pair.positive, pair.negative} == {"Yes", "No"}:
        return "Yes"
    return pair.positive


# ---- results ------------------------------------------------------------------------------------------


@dataclass
class ABGrid:
    """Per cell, item and order (file order, then swapped): p(matching) and p(first answer), both normalised
    over the two answers, and the probability mass the two answers get together."""

    cells: list[Cell]
    pairs: list[ContrastivePair]
    match: torch.Tensor  # [cells, items, orders]
    first: torch.Tensor  # [cells, items, orders]
    mass: torch.Tensor  # [cells, items, orders]

    @property
    def orders(self) -> int:
        return self.match.shape[2]

    def item_scores(self, c: int) -> torch.Tensor:
        """Order-averaged p(matching) per item for cell number c."""
        return self.match[c].mean(1)

    def p_matching(self, c: int) -> float:
        """The debiased behaviour score: order-averaged, or (Yes/No items) balanced over the matching answer."""
        scores = self.item_scores(c)
        if self.orders == 1:
            groups = torch.tensor([p.positive == first_answer(p) for p in self.pairs])
            if groups.any() and not groups.all():
                return float((scores[groups].mean() + scores[~groups].mean()) / 2)
        return float(scores.mean())

    def summary(self, c: int, baseline: int | None = 0) -> dict[str, float]:
        """Numbers for cell c; flips are counted against cell `baseline` (the unsteered one by default)."""
        pref = self.item_scores(c) > 0.5
        out = {
            "p_matching": round(self.p_matching(c), 4),
            "p_matching_file_order": round(float(self.match[c, :, 0].mean()), 4),
            "accuracy": round(float(pref.float().mean()), 4),
            "first_answer_share": round(float(self.first[c].mean()), 4),
            "answer_mass": round(float(self.mass[c].mean()), 4),
        }
        if self.orders == 2:
            first_pref = self.first[c] > 0.5
            out["first_in_both_orders"] = round(float(first_pref.all(1).float().mean()), 4)
            out["second_in_both_orders"] = round(float((~first_pref).all(1).float().mean()), 4)
        if baseline is not None and baseline != c:
            base = self.item_scores(baseline) > 0.5
            out["flipped"] = round(float((pref != base).float().mean()), 4)
            out["flipped_to_matching"] = round(float((pref & ~base).float().mean()), 4)
            diff = self.item_scores(c) - self.item_scores(baseline)
            # Standard error of the mean per-question change: how far p(matching) moved beyond item noise.
            out["change_se"] = round(float(diff.std() / len(diff) ** 0.5), 4) if len(diff) > 1 else 0.0
        return out


def at_chance(summary: dict[str, float], n: int) -> bool:
    """Unsteered accuracy within two binomial standard errors of 1/2 and debiased p(matching) within 0.05 of 1/2:
    the model does not tell the two answers apart, so a steering effect there is hard to read."""
    return abs(summary["accuracy"] - 0.5) < 2 * math.sqrt(0.25 / n) and abs(summary["p_matching"] - 0.5) < 0.05


LETTER_SHIFT_MIN = 0.05  # an A-share change below this is not read as a preference for one letter


def ab_movement(behaviour_change: float, letter_shift: float, *, min_effect: float) -> str:
    """What a steered A/B cell moved: "letter" when the A-share shift is real and over twice the change in
    p(matching) (the steer picks a letter, whatever it says), "neither" when p(matching) moved less than
    `min_effect` (the sweep's smallest effect worth recommending), else "behaviour"."""
    if abs(letter_shift) >= LETTER_SHIFT_MIN and abs(letter_shift) > 2 * abs(behaviour_change):
        return "letter"
    if abs(behaviour_change) < min_effect:
        return "neither"
    return "behaviour"


def letter_words(behaviour_change: float, letter_shift: float, *, min_effect: float) -> str:
    """Say whether a steer moved the behaviour, mostly which letter the model picks, or neither."""
    moved = ab_movement(behaviour_change, letter_shift, min_effect=min_effect)
    if moved == "letter":
        return (
            f"moves the letter rather than the behaviour (A-share {letter_shift:+.3f} vs p(matching) "
            f"{behaviour_change:+.3f})"
        )
    if moved == "neither":
        return (
            f"moves neither the behaviour nor the letter (p(matching) {behaviour_change:+.3f}, under "
            f"{min_effect:g}; A-share {letter_shift:+.3f})"
        )
    return f"moves the behaviour (p(matching) {behaviour_change:+.3f}, A-share {letter_shift:+.3f})"


# ---- scoring ------------------------------------------------------------------------------------------


@dataclass
class _Row:
    prefix: list[int]
    suffix: list[int]
    matching: int
    other: int
    first_is_matching: bool


def _prepare(lm: LoadedModel, pair: ContrastivePair, positions: str) -> _Row:
    """Token rows for one item: the context up to where the two full answers' tokens first differ, and those tokens.

    Tokenizing each full answer (not the answer prefix and the letter apart) keeps the tokenizer's own
    merges: SmolLM2 writes "(A" as "(" + "A" and is asked after "(", Qwen writes "(A" as one token and
    is asked for "(A" against "(B" right after the assistant-turn start.
    """
    tok = lm.tokenizer
    chat = bool(lm.use_chat_template)
    if chat:
        messages = [{"role": "user", "content": pair.prompt}]
        text = str(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        user_text = str(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False))
    else:
        text, user_text = pair.prompt, pair.prompt
    try:
        context, rest_m, rest_n = split_at_divergence(
            tok(text + pair.answer_prefix + pair.positive, add_special_tokens=not chat)["input_ids"],
            tok(text + pair.answer_prefix + pair.negative, add_special_tokens=not chat)["input_ids"],
        )
    except ValueError:
        raise ABFormatError(
            f"answers {pair.positive!r} and {pair.negative!r} do not tokenize to different tokens "
            "after a shared context"
        ) from None
    k = len(context)
    split = 0
    if positions == "answer":
        user_ids = tok(user_text, add_special_tokens=not chat)["input_ids"]
        while split < min(k - 1, len(user_ids)) and context[split] == user_ids[split]:
            split += 1
    return _Row(context[:split], context[split:], rest_m[0], rest_n[0], pair.positive == first_answer(pair))


def _specs(vectors: Sequence[SteeringVector], cells: Sequence[Cell], rows_per_cell: int) -> list[SteeringSpec]:
    """One spec per (vector, layer) in `cells`, its per-row multipliers zero on rows of other cells."""
    specs = []
    for key in sorted({(c.vector, c.layer) for c in cells if c.layer is not None}):
        mults = [c.multiplier if (c.vector, c.layer) == key else 0.0 for c in cells for _ in range(rows_per_cell)]
        specs.append(SteeringSpec(vectors[key[0]], mults, [key[1]], "all"))
    return specs


@torch.inference_mode()
def score_ab(
    lm: LoadedModel,
    pairs: Sequence[ContrastivePair],
    vectors: SteeringVector | Sequence[SteeringVector] | None = None,
    cells: Sequence[Cell] = (UNSTEERED,),
    *,
    swap: bool = True,
    positions: str = "answer",
    batch_rows: int = 64,
    task: str | None = None,
    progress: Callable[[int], object] | None = None,
) -> ABGrid:
    """Score A/B items under every cell (both choice orders when `swap`), in batched passes of about `batch_rows` rows."""
    if positions not in POSITIONS:
        raise UsageError(f"positions must be one of {', '.join(POSITIONS)}; got '{positions}'")
    if not pairs:
        raise UsageError("no A/B items to score")
    vectors = [vectors] if isinstance(vectors, SteeringVector) else list(vectors or [])
    cells = list(cells)
    for cell in cells:
        if cell.layer is not None and not 0 <= cell.vector < len(vectors):
            raise UsageError(f"cell {cell} names vector {cell.vector} but {len(vectors)} vectors were given")
    check_ab_items(pairs, swap)
    orders = 2 if swap and all(is_lettered(p) for p in pairs) else 1
    variants = [[p, swap_choices(p)] if orders == 2 else [p] for p in pairs]
    rows = [_prepare(lm, v, positions) for group in variants for v in group]

    n_cells = len(cells)
    per_pass = max(1, min(n_cells, batch_rows // 8))
    prefix_batch = max(1, batch_rows // per_pass)
    match = torch.empty(n_cells, len(rows))
    first = torch.empty_like(match)
    mass = torch.empty_like(match)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].prefix) + len(rows[i].suffix))
    for start in range(0, len(order), prefix_batch):
        idx = order[start : start + prefix_batch]
        chunk = [rows[i] for i in idx]
        prefix = _run_prefix(lm, chunk)
        for c0 in range(0, n_cells, per_pass):
            group = cells[c0 : c0 + per_pass]
            steer = SpecSteering(_specs(vectors, group, len(chunk)))
            probs = _run_suffix(lm, chunk, prefix, len(group), steer, task)  # [cells in group, rows, 2]
            m, n = probs[..., 0], probs[..., 1]
            total = (m + n).clamp(min=1e-30)
            flags = torch.tensor([r.first_is_matching for r in chunk])
            match[c0 : c0 + len(group), idx] = m / total
            first[c0 : c0 + len(group), idx] = torch.where(flags, m, n) / total
            mass[c0 : c0 + len(group), idx] = m + n
            if progress:
                progress(len(group) * len(chunk))
    shape = (n_cells, len(pairs), orders)
    return ABGrid(cells, list(pairs), match.view(shape), first.view(shape), mass.view(shape))


def _run_prefix(lm: LoadedModel, chunk: list[_Row]) -> PrefixCache | None:
    """Run the unsteered question tokens once; their cache serves every cell's answer tokens."""
    if not all(r.prefix for r in chunk):
        if any(r.prefix for r in chunk):
            raise ABFormatError("some questions split into question and answer tokens and some do not")
        return None
    return run_prefix(lm, [r.prefix for r in chunk], logits_to_keep=1)


def _run_suffix(
    lm: LoadedModel, chunk: list[_Row], prefix: PrefixCache | None, n_cells: int, steer: SpecSteering, task: str | None
) -> torch.Tensor:
    """Steered forward of the answer tokens for every (cell, row); returns p(matching), p(other): [cells, rows, 2]."""
    suffixes = [r.suffix for r in chunk] * n_cells
    if prefix is not None:
        inputs, suffix_mask = prefix.repeated(n_cells, interleave=False).continuation(lm, suffixes)
    else:
        ids, suffix_mask = pad(suffixes, lm.tokenizer.pad_token_id, left=False)
        inputs = {
            "input_ids": ids.to(lm.device),
            "attention_mask": suffix_mask.to(lm.device),
            "position_ids": positions_from_mask(suffix_mask).to(lm.device),
            "use_cache": False,
        }
    lengths = suffix_mask.sum(1)
    uniform = bool((lengths == suffix_mask.shape[1]).all())
    with steer.attach(lm, task=task):
        out = lm.model(**inputs, logits_to_keep=1 if uniform else 0)
    logits = out.logits[:, -1] if uniform else out.logits[torch.arange(len(lengths)), lengths - 1]
    probs = torch.softmax(logits.float(), dim=-1).cpu()
    wanted = torch.tensor([[r.matching, r.other] for r in chunk] * n_cells)
    return probs.gather(1, wanted).view(n_cells, len(chunk), 2)
