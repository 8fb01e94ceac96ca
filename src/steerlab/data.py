"""Contrastive datasets: readers for the shared formats, validation with file/line/field errors, chat templating."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import SteerlabError
from .textio import decode, loads


class DatasetError(SteerlabError, ValueError):
    """A dataset file is malformed; the message names the file, the line and the field."""


@dataclass(frozen=True)
class ContrastivePair:
    """One contrast: the same prompt answered the wanted way (positive) and the unwanted way (negative).

    `kind` is "ab" for multiple-choice items (read at the answer token, as in the CAA paper) or
    "text" for free-text completions (averaged over the completion tokens, as in EasyEdit2).
    An empty prompt means the completions are stand-alone texts (e.g. positive vs negative reviews).
    `answer_prefix` is text both answers share after the assistant-turn start ("(" for "(A)"/"(B)").
    """

    prompt: str
    positive: str
    negative: str
    kind: str = "text"
    answer_prefix: str = ""


@dataclass
class ContrastiveDataset:
    pairs: list[ContrastivePair]
    name: str
    sha256: str

    def __len__(self) -> int:
        return len(self.pairs)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "pairs": len(self.pairs),
            "kinds": sorted({p.kind for p in self.pairs}),
        }

    def subset(self, indices: Iterable[int], name_suffix: str = "") -> ContrastiveDataset:
        return ContrastiveDataset([self.pairs[i] for i in indices], self.name + name_suffix, self.sha256)


DEMO_DATASET = "sentiment_pairs.jsonl"


def demo_dataset_path() -> Path:
    """The small sentiment pair set steerlab ships (written for steerlab, not copied from a public set)."""
    return Path(str(resources.files("steerlab") / "resources" / DEMO_DATASET))


def pairs_dataset(pairs: Sequence[ContrastivePair], name: str) -> ContrastiveDataset:
    """A dataset of pairs a task builds in memory, its sha256 taken over every field of every pair."""
    if not pairs:
        raise DatasetError(f"{name}: no pairs")
    fields = [[p.prompt, p.positive, p.negative, p.kind, p.answer_prefix] for p in pairs]
    return ContrastiveDataset(list(pairs), name, hashlib.sha256(json.dumps(fields).encode()).hexdigest())


def pairs_from_texts(
    positive: Sequence[str], negative: Sequence[str], prompt: str = "", name: str = "inline"
) -> ContrastiveDataset:
    """Pair up two lists of texts (e.g. one inline --positive/--negative, or positive vs negative reviews)."""
    if len(positive) != len(negative):
        raise DatasetError(
            f"{name}: {len(positive)} positive and {len(negative)} negative texts; the sides must be the same size"
        )
    if not positive:
        raise DatasetError(f"{name}: no pairs; give at least one positive and one negative text")
    pairs = [ContrastivePair(prompt, p, n, "text") for p, n in zip(positive, negative, strict=False)]
    digest = hashlib.sha256(json.dumps([prompt, list(positive), list(negative)]).encode()).hexdigest()
    return ContrastiveDataset(pairs, name, digest)


def load_pairs(path: str | Path) -> ContrastiveDataset:
    """Read contrastive pairs from any supported file, detecting its format from the first record.

    Supported: CAA `generate_dataset.json` (question / answer_matching_behavior /
    answer_not_matching_behavior), Anthropic persona `*.jsonl` (same fields, " Yes"/" No" answers), and
    a plain JSONL of pairs with `positive`, `negative` and optional `prompt`.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    text = decode(raw, str(path), DatasetError)
    records = _records(path, text)
    if not records:
        raise DatasetError(f"{path}: no pairs in the file")
    pairs = [_pair(path, line, record) for line, record in records]
    kinds = {p.kind for p in pairs}
    if len(kinds) > 1:
        raise DatasetError(f"{path}: mixes A/B items and free-text pairs; keep one kind per file")
    return ContrastiveDataset(pairs, path.name, digest)


def _records(path: Path, text: str) -> list[tuple[int, Any]]:
    stripped = text.lstrip()
    if stripped.startswith("["):
        items = loads(text, str(path), DatasetError)
        if not isinstance(items, list):
            raise DatasetError(f"{path}: expected a JSON array of pairs")
        # JSON arrays carry no line numbers per item; report the 1-based item number instead.
        return [(i + 1, item) for i, item in enumerate(items)]
    out = []
    # Only \n ends a record: str.splitlines would also split inside a string at \u2028 or \x1c.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        out.append((lineno, loads(line, str(path), DatasetError, line=lineno)))
    return out


def _field(path: Path, line: int, record: dict, name: str) -> str:
    if name not in record:
        raise DatasetError(f"{path}: line {line}: missing field '{name}'")
    value = record[name]
    if isinstance(value, list) and len(value) == 1:  # some persona files wrap answers in a list
        value = value[0]
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{path}: line {line}: field '{name}' must be a non-empty string")
    return value


def _pair(path: Path, line: int, record: Any) -> ContrastivePair:
    if not isinstance(record, dict):
        raise DatasetError(f"{path}: line {line}: expected a JSON object, got {type(record).__name__}")
    if "answer_matching_behavior" in record or "answer_not_matching_behavior" in record:
        question = _field(path, line, record, "question")
        pos = _field(path, line, record, "answer_matching_behavior")
        neg = _field(path, line, record, "answer_not_matching_behavior")
        if pos.strip() == neg.strip():
            raise DatasetError(
                f"{path}: line {line}: both answers are '{pos.strip()}'; a pair needs two different answers"
            )
        pos_letter, neg_letter, prefix = split_ab_answers(pos, neg)
        return ContrastivePair(question, pos_letter, neg_letter, "ab", prefix)
    if "positive" in record or "negative" in record:
        pos = _field(path, line, record, "positive")
        neg = _field(path, line, record, "negative")
        prompt = record.get("prompt", "")
        if not isinstance(prompt, str):
            raise DatasetError(f"{path}: line {line}: field 'prompt' must be a string")
        return ContrastivePair(prompt, pos, neg, "text")
    raise DatasetError(
        f"{path}: line {line}: missing field 'positive' (a pair needs 'positive' and 'negative', or CAA's "
        f"'question', 'answer_matching_behavior' and 'answer_not_matching_behavior'); found {sorted(record)}"
    )


_LETTERED = re.compile(r"^\(([A-Za-z])\)")


def split_ab_answers(pos: str, neg: str) -> tuple[str, str, str]:
    """Split A/B answers into (positive, negative, shared prefix): "(A)"/"(B)" -> "A", "B", "("; " Yes" -> "Yes".

    The opening bracket belongs to the shared prompt, as in CAA's scoring ("... (" then compare A vs B),
    and the closing one is dropped because a causal model's activation at the letter never sees it.
    """
    p, n = pos.strip(), neg.strip()
    letter_p, letter_n = _LETTERED.match(p), _LETTERED.match(n)
    if letter_p and letter_n:  # "(A)", "(A)Yes", "(A) Yes": the model answers with the letter
        return letter_p.group(1), letter_n.group(1), "("
    if p.startswith("(") and n.startswith("("):
        return p[1:].rstrip(")"), n[1:].rstrip(")"), "("
    return p, n, ""


def format_prompt(tokenizer: Any, user_text: str, *, use_chat_template: bool, system: str | None = None) -> str:
    """The text a model sees before its answer: the chat template's user turn plus the assistant-turn start."""
    if not use_chat_template:
        return (system + "\n\n" + user_text) if system else user_text
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
