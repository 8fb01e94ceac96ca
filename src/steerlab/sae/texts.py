"""Text sets an SAE trains on or shows snippets from: the user's file, or a named set of the shared data.

A file is plain text (one text per non-blank line) or JSONL ({"text": ...} per line, read strictly). Named
sets read ../shared/data in place (evaluation.tasks.data_root): "dexperts-sentiment" is the DExperts
positive and negative prompts with their continuations (5,000 texts), disjoint from the neutral prompts the
sentiment task steers and scores.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..evaluation.tasks import TaskError, data_root
from ..textio import loads, read_text

NAMED_SETS = {"dexperts-sentiment": ("sentiment/positive_prompts.jsonl", "sentiment/negative_prompts.jsonl")}


def load_texts(source: str, data_dir: str | Path | None = None) -> list[str]:
    """The texts of a named shared set or a .txt / .jsonl file."""
    if source in NAMED_SETS:
        root = data_root(data_dir)
        return [text for name in NAMED_SETS[source] for text in _dexperts(root / name)]
    path = Path(source)
    if not path.is_file():
        raise UsageError(
            f"{source}: no such text file and not a named set ({', '.join(NAMED_SETS)}); give a .txt or .jsonl file"
        )
    text = read_text(path, UsageError)
    if path.suffix != ".jsonl":
        return [line.strip() for line in text.splitlines() if line.strip()]
    out = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            record = loads(line, str(path), UsageError, line=lineno)
            value = record.get("text") if isinstance(record, dict) else None
            if not isinstance(value, str):
                raise UsageError(f'{path}: line {lineno}: expected {{"text": "..."}}')
            out.append(value)
    if not out:
        raise UsageError(f"{path}: no texts in the file")
    return out


def _dexperts(path: Path) -> list[str]:
    """Prompt and continuation of each DExperts record, joined as one text by a space (the files strip the
    continuation's leading space: "...captures the bizarre reality" + "of the U.S.")."""
    out = []
    for lineno, line in enumerate(read_text(path, TaskError).split("\n"), start=1):
        if line.strip():
            record = loads(line, str(path), TaskError, line=lineno)
            try:
                out.append(record["prompt"]["text"].rstrip() + " " + record["continuation"]["text"].lstrip())
            except (KeyError, TypeError):
                raise TaskError(f"{path}: line {lineno}: expected prompt.text and continuation.text") from None
    return out
