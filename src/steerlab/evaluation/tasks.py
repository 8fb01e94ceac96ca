"""Steering tasks: which data builds a vector (train) and which scores it (val, test), with disjoint splits.

Built-in tasks read the shared data folder (`--data-dir`, $STEERLAB_DATA, or ../shared/data beside the
project); a user registers a task from their own files with a small YAML/JSON description, checked
like a config. "ab" tasks are scored by the A/B behaviour probability (evaluation.ab); "generation"
tasks by a text metric on continuations of prompts (any of evaluation.metric_registry: sentiment, toxicity,
refusal, ...); "reasoning" tasks (maths problems with exact answers) by accuracy and the tokens an answer
spends (evaluation.reasoning).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import build_config, parse_yaml
from ..data import ContrastiveDataset, ContrastivePair, DatasetError, demo_dataset_path, load_pairs, pairs_from_texts
from ..errors import SteerlabError
from ..textio import loads, read_text
from .ab import load_ab_items
from .metric_registry import text_metrics
from .reasoning import length_pairs, read_math_items, split_of

DATA_ENV = "STEERLAB_DATA"
KINDS = ("ab", "generation", "reasoning")
SPLITS = ("val", "test")
CAA_BEHAVIOURS = ("sycophancy", "hallucination", "refusal")
CAA_VAL_SIZE = 50  # the last items of each CAA generate file are held out of training to choose layer and strength
GEN_VAL_SIZE = 100


class TaskError(SteerlabError, ValueError):
    """A task is unknown, its files are missing, or its description is wrong; the message says how to fix it."""


@dataclass(frozen=True)
class Control:
    """Extra prompts scored with steering of a given sign, e.g. negative prompts steered toward positive."""

    name: str
    prompts: Callable[[Path], list[str]]
    sign: float


@dataclass(frozen=True)
class Task:
    """A named steering task: its train pairs and its val/test items (A/B pairs or prompts)."""

    name: str
    kind: str
    description: str
    files: tuple[str, ...]
    train: Callable[[Path], ContrastiveDataset]
    items: Callable[[Path, str], list]
    metric: str = "ab"
    direction: float = 1.0  # the sign of the metric change a positive multiplier is meant to cause
    chat: bool = True  # wrap generation prompts in the model's chat template
    controls: tuple[Control, ...] = ()
    has_val: bool = True

    def train_data(self, data_dir: str | Path | None = None, limit: int | None = None) -> ContrastiveDataset:
        """The contrastive pairs a vector for this task is built from (the first `limit` of them)."""
        data = self.train(self._root(data_dir))
        return data.subset(range(min(limit, len(data))), f"[:{limit}]") if limit is not None else data

    def eval_items(self, split: str = "test", data_dir: str | Path | None = None, limit: int | None = None) -> list:
        """A/B pairs ("ab") or prompts ("generation") of a held-out split, the first `limit` of them."""
        if split not in SPLITS:
            raise TaskError(f"split must be one of {', '.join(SPLITS)}; got '{split}'")
        items = self.items(self._root(data_dir), split if self.has_val else "test")
        return items[:limit] if limit is not None else items

    def _root(self, data_dir: str | Path | None) -> Path:
        root = data_root(data_dir) if self.files and not Path(self.files[0]).is_absolute() else Path("/")
        missing = [f for f in self.files if not (root / f).is_file()]
        if missing:
            raise TaskError(
                f"task '{self.name}' needs {root / missing[0]}, which is missing; "
                f"point --data-dir (or ${DATA_ENV}) at the shared data folder that holds it"
            )
        return root


def data_root(explicit: str | Path | None = None) -> Path:
    """The shared data folder: the given one, $STEERLAB_DATA, or ../shared/data beside the working folder or the project."""
    if explicit is not None:
        candidates = [Path(explicit)]
    elif os.environ.get(DATA_ENV):
        candidates = [Path(os.environ[DATA_ENV])]
    else:
        candidates = [Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[3] / "shared" / "data"]
    for path in candidates:
        if path.is_dir():
            return path
    raise TaskError(
        f"no task data folder at {candidates[0]}; pass --data-dir (or set ${DATA_ENV}) to the "
        "folder holding caa/, persona/, sentiment/, toxicity/ and refusal/ (see its MANIFEST.md)"
    )


# ---- readers --------------------------------------------------------------------------------------------


def _jsonl_prompts(path: Path) -> list[str]:
    out = []
    for lineno, line in enumerate(read_text(path, TaskError).split("\n"), start=1):
        if line.strip():
            record = loads(line, str(path), TaskError, line=lineno)
            prompt = record.get("prompt") if isinstance(record, dict) else None
            prompt = prompt.get("text") if isinstance(prompt, dict) else prompt
            if not isinstance(prompt, str) or not prompt.strip():
                raise TaskError(f'{path}: line {lineno}: needs "prompt": a non-empty string or {{"text": ...}}')
            out.append(prompt)
    if not out:
        raise TaskError(f"{path}: no prompts in the file")
    return out


def _instructions(path: Path) -> list[str]:
    return [r["instruction"] for r in json.loads(path.read_text(encoding="utf-8"))]


def _tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _prompts_file(path: Path) -> list[str]:
    """Prompts from a .txt (one per line) or a .jsonl whose records have "prompt" (a string or {"text": ...})."""
    if path.suffix == ".jsonl":
        return _jsonl_prompts(path)
    prompts = [line.strip() for line in read_text(path, TaskError).split("\n") if line.strip()]
    if not prompts:
        raise TaskError(f"{path}: no prompts in the file")
    return prompts


# ---- built-in tasks -------------------------------------------------------------------------------------


def _caa(behaviour: str) -> Task:
    gen, test = f"caa/generate/{behaviour}/generate_dataset.json", f"caa/test/{behaviour}/test_dataset_ab.json"

    def train(root: Path) -> ContrastiveDataset:
        data = load_pairs(root / gen)
        return data.subset(range(len(data) - CAA_VAL_SIZE), "[train]")

    def items(root: Path, split: str) -> list:
        return load_ab_items(root / gen)[-CAA_VAL_SIZE:] if split == "val" else load_ab_items(root / test)

    return Task(
        behaviour,
        "ab",
        f"CAA {behaviour} A/B questions (train: generate set less its last {CAA_VAL_SIZE}; "
        f"val: those {CAA_VAL_SIZE}; test: the 50 held-out test questions)",
        (gen, test),
        train,
        items,
    )


def _persona(trait: str) -> Task:
    rel = f"persona/{trait}.jsonl"

    def split_of(i: int) -> str:
        return "test" if i % 10 == 0 else "val" if i % 20 == 5 else "train"

    def train(root: Path) -> ContrastiveDataset:
        data = load_pairs(root / rel)
        return data.subset([i for i in range(len(data)) if split_of(i) == "train"], "[train]")

    def items(root: Path, split: str) -> list:
        return [p for i, p in enumerate(load_ab_items(root / rel)) if split_of(i) == split]

    return Task(
        f"persona/{trait}",
        "ab",
        f"persona statements '{trait}', ' Yes'/' No' (test: every 10th item; "
        "val: every 20th from the 6th; train: the rest)",
        (rel,),
        train,
        items,
    )


def _sentiment(sst2: bool) -> Task:
    """From steerlab's shipped contrastive pairs (prompted replies), or from SST-2's positive vs negative sentences."""
    sst, neutral = "sentiment/sst2_dev.tsv", "sentiment/neutral_prompts.jsonl"
    positive, negative = "sentiment/positive_prompts.jsonl", "sentiment/negative_prompts.jsonl"

    def train(root: Path) -> ContrastiveDataset:
        if not sst2:
            return load_pairs(demo_dataset_path())
        rows = _tsv(root / sst)
        pos = [r["sentence"].strip() for r in rows if r["label"] == "1"]
        neg = [r["sentence"].strip() for r in rows if r["label"] == "0"]
        n = min(len(pos), len(neg))
        return pairs_from_texts(pos[:n], neg[:n], name="sst2_dev")

    def items(root: Path, split: str) -> list:
        prompts = _jsonl_prompts(root / neutral)
        return prompts[-GEN_VAL_SIZE:] if split == "val" else prompts[: len(prompts) - GEN_VAL_SIZE]

    controls = (
        Control("negative prompts steered +", lambda root: _jsonl_prompts(root / negative), 1.0),
        Control("positive prompts steered -", lambda root: _jsonl_prompts(root / positive), -1.0),
    )
    source = "SST-2 positive vs negative sentences" if sst2 else "steerlab's 72 shipped contrastive reply pairs"
    return Task(
        "sentiment-sst2" if sst2 else "sentiment",
        "generation",
        f"{source}; VADER of continuations of DExperts neutral prompts (val: the last {GEN_VAL_SIZE})",
        ((sst,) if sst2 else ()) + (neutral, positive, negative),
        train,
        items,
        metric="sentiment",
        chat=False,
        controls=controls,
    )


def _toxicity() -> Task:
    para, challenging, nontoxic = (
        "toxicity/paradetox.tsv",
        "toxicity/rtp_challenging_toxic.jsonl",
        "toxicity/rtp_nontoxic.jsonl",
    )

    def train(root: Path) -> ContrastiveDataset:
        rows = [r for r in _tsv(root / para) if r["toxic"] and r["neutral1"]][:1000]
        return pairs_from_texts([r["neutral1"] for r in rows], [r["toxic"] for r in rows], name="paradetox[:1000]")

    def items(root: Path, split: str) -> list:
        prompts = _jsonl_prompts(root / challenging)
        return prompts[-GEN_VAL_SIZE:] if split == "val" else prompts[: len(prompts) - GEN_VAL_SIZE]

    controls = (Control("non-toxic prompts steered +", lambda root: _jsonl_prompts(root / nontoxic), 1.0),)
    return Task(
        "toxicity",
        "generation",
        "ParaDetox neutral rewrite (+) vs toxic sentence (-); toxicity of "
        "continuations of RealToxicityPrompts challenging prompts (positive multipliers detoxify)",
        (para, challenging, nontoxic),
        train,
        items,
        metric="toxicity",
        direction=-1.0,
        chat=False,
        controls=controls,
    )


def _harmful_refusal() -> Task:
    files = (
        "refusal/harmful_train.json",
        "refusal/harmless_train.json",
        "refusal/harmful_val.json",
        "refusal/harmful_test.json",
        "refusal/harmless_test.json",
    )

    def train(root: Path) -> ContrastiveDataset:
        harmful = _instructions(root / files[0])
        return pairs_from_texts(
            harmful, _instructions(root / files[1])[: len(harmful)], name="harmful_vs_harmless_train"
        )

    def items(root: Path, split: str) -> list:
        return _instructions(root / (files[2] if split == "val" else files[3]))

    controls = (Control("harmless prompts steered +", lambda root: _instructions(root / files[4]), 1.0),)
    return Task(
        "harmful-refusal",
        "generation",
        "harmful vs harmless instructions (Arditi et al.); refusal rate on "
        "held-out harmful instructions, harmless ones as the over-refusal control",
        files,
        train,
        items,
        metric="refusal",
        controls=controls,
    )


def _reasoning_length() -> Task:
    rel = "gsm8k/train.jsonl"

    def train(root: Path) -> ContrastiveDataset:
        items = read_math_items(root / rel)
        return length_pairs([it for i, it in enumerate(items) if split_of(i) == "fit"], "gsm8k[fit]")

    def items(root: Path, split: str) -> list:
        return [it for i, it in enumerate(read_math_items(root / rel)) if split_of(i) == split]

    return Task(
        "reasoning-length",
        "reasoning",
        "GSM8K problems: worked solution (+, longer) vs the final answer alone; accuracy and tokens per answer "
        "(GSM8K's train split: every 10th problem test, every 10th from the 6th val, the rest fit the pairs)",
        (rel,),
        train,
        items,
        metric="reasoning",
    )


def builtin_tasks(data_dir: str | Path | None = None) -> dict[str, Task]:
    """Every built-in task; persona tasks are one per trait file found in the data folder."""
    tasks = {b: _caa(b) for b in CAA_BEHAVIOURS}
    tasks.update(
        {t.name: t for t in (_sentiment(False), _sentiment(True), _toxicity(), _harmful_refusal(), _reasoning_length())}
    )
    try:
        persona = sorted(p.stem for p in (data_root(data_dir) / "persona").glob("*.jsonl"))
    except TaskError:
        persona = []
    tasks.update({f"persona/{trait}": _persona(trait) for trait in persona})
    return tasks


def get_task(name: str, data_dir: str | Path | None = None) -> Task:
    """A built-in task by name, or a user task from a .yaml/.yml/.json description file."""
    if Path(name).suffix in (".yaml", ".yml", ".json"):
        return load_task_file(name)
    tasks = builtin_tasks(data_dir)
    if name.startswith("persona/") and name not in tasks:
        return _persona(name.split("/", 1)[1])  # reports the missing file when used
    if name not in tasks:
        raise TaskError(f"unknown task '{name}'; built-in tasks: {', '.join(tasks)}; or give a task file (.yaml/.json)")
    return tasks[name]


# ---- user tasks -----------------------------------------------------------------------------------------


@dataclass
class TaskFile:
    """A user task: name; kind (ab, generation or reasoning); train (a pairs file steerlab reads; reasoning: maths
    problems with worked solutions); test (ab: an A/B file like CAA's; generation: prompts .txt or .jsonl;
    reasoning: a JSONL of {"question", "answer"}); val (optional, default test); metric (generation: sentiment,
    toxicity, refusal or any registered metric); direction (+1 or -1); chat (wrap prompts in the chat template);
    description."""

    name: str
    kind: str
    train: str
    test: str
    val: str = ""
    metric: str = ""
    direction: float = 1.0
    chat: bool = True
    description: str = ""


def load_task_file(path: str | Path) -> Task:
    """Read and check a task description; file paths in it are relative to the description's folder."""
    path = Path(path)
    if not is_file(path, f"{path}: the task file"):
        raise TaskError(f"{path}: no such task file")
    text = read_text(path, TaskError)
    lines: dict[str, int]
    if path.suffix == ".json":
        raw, lines = loads(text, str(path), TaskError), {}
    else:
        raw, lines = parse_yaml(text, str(path), TaskError)
    if not isinstance(raw, dict):
        raise TaskError(f"{path}: a task file must be a mapping of key: value")
    missing = [key for key in TASK_KEYS if key not in raw]
    if missing:
        raise TaskError(
            f"{path}: missing key{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))}; a task file needs {', '.join(TASK_KEYS)} "
            "(e.g. name: mine, kind: ab, train: train.json, test: test.json)"
        )
    spec = build_config(TaskFile, raw, str(path), lines)
    for key in ("name", "train", "test"):
        if not getattr(spec, key).strip():
            raise TaskError(f"{path}: '{key}' must not be empty")
    for key in ("train", "test", "val"):
        if "\x00" in getattr(spec, key):
            raise TaskError(f"{path}: '{key}' is not a usable file name")
    if spec.kind not in KINDS:
        raise TaskError(f"{path}: kind must be one of {', '.join(KINDS)}; got '{spec.kind}'")
    if spec.kind == "generation" and spec.metric not in text_metrics():
        raise TaskError(
            f"{path}: a generation task needs metric: one of {', '.join(text_metrics())}; got '{spec.metric}'"
        )
    if spec.kind in ("ab", "reasoning") and spec.metric:
        scored = "p(matching)" if spec.kind == "ab" else "accuracy and tokens"
        raise TaskError(f"{path}: an {spec.kind} task is scored by {scored}; remove 'metric: {spec.metric}'")
    if spec.direction not in (1.0, -1.0):
        raise TaskError(f"{path}: direction must be 1 or -1; got {spec.direction}")
    base = path.parent
    files: dict[str, Path] = {}
    for key, value in (("train", spec.train), ("test", spec.test), ("val", spec.val)):
        if not value:
            continue
        where = f"{path}: key '{key}': the file {value[:80]!r}"
        try:
            files[key] = (base / value).resolve()
        except OSError as exc:
            raise TaskError(f"{where} cannot be read ({exc.strerror or exc})") from None
        if not is_file(files[key], where):
            raise TaskError(f"{path}: {key} file {files[key]} does not exist")

    def items(_root: Path, split: str) -> list:
        file = files.get(split, files["test"])
        if spec.kind == "reasoning":
            return read_math_items(file)
        return load_ab_items(file) if spec.kind == "ab" else _prompts_file(file)

    def train(_root: Path) -> ContrastiveDataset:
        if spec.kind == "reasoning":
            return length_pairs(read_math_items(files["train"]), files["train"].name)
        data = load_pairs(files["train"])
        if spec.kind == "ab":
            _check_disjoint(path, data.pairs, items(_root, "test"))
        return data

    return Task(
        spec.name,
        spec.kind,
        spec.description or f"user task from {path}",
        tuple(str(f) for f in files.values()),
        train,
        items,
        metric=spec.metric or ("reasoning" if spec.kind == "reasoning" else "ab"),
        direction=spec.direction,
        chat=spec.chat,
        has_val="val" in files,
    )


TASK_KEYS = ("name", "kind", "train", "test")  # the keys every task file gives


def is_file(path: Path, where: str) -> bool:
    """Path.is_file, with an unusable name (too long, say) refused as a TaskError naming `where`."""
    try:
        return path.is_file()
    except OSError as exc:
        raise TaskError(f"{where} cannot be read ({exc.strerror or exc})") from None


def _check_disjoint(path: Path, train: list[ContrastivePair], test: list[ContrastivePair]) -> None:
    seen = {p.prompt for p in train}
    shared = [p.prompt for p in test if p.prompt in seen]
    if shared:
        raise DatasetError(
            f"{path}: {len(shared)} test questions also appear in train (first: {shared[0][:60]!r}); "
            "a task's train and test must not overlap"
        )
