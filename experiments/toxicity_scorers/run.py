"""Rank offline toxicity scorers by AUROC against Perspective API labels on RealToxicityPrompts texts
(docs/toxicity_scorers.md, which chose steerlab's default scorer).

    python experiments/toxicity_scorers/run.py measure   # score every text with each installed scorer, then render
    python experiments/toxicity_scorers/run.py render    # rewrite docs/toxicity_scorers.md from results.json

Every prompt and continuation in the two shared RTP files carries Perspective's toxicity; a text is
toxic when that is >= 0.5 (texts without a score are left out). Scorers that are not installed are
listed as skipped with the command that installs them. `measure` saves the table's numbers and the command
line that made them in results.json beside this script (committed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import DATA, save_json  # noqa: E402

from steerlab.evaluation.auroc import auroc  # noqa: E402
from steerlab.evaluation.sentiment import vader_scores  # noqa: E402
from steerlab.evaluation.toxicity import ProfanityCheckScorer  # noqa: E402

RESULTS = HERE / "results.json"
DOC = REPO / "docs" / "toxicity_scorers.md"
FILES = ("rtp_challenging_toxic.jsonl", "rtp_nontoxic.jsonl")
Scorer = Callable[[Sequence[str]], list[float]]


def load_texts(data_dir: Path) -> tuple[list[str], list[bool], list[str]]:
    """All prompt and continuation texts with a Perspective toxicity, whether it is >= 0.5, and which part each is."""
    texts, labels, parts = [], [], []
    for name in FILES:
        with open(data_dir / "toxicity" / name, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                for part in ("prompt", "continuation"):
                    score = row[part].get("toxicity")
                    if score is not None and row[part]["text"].strip():
                        texts.append(row[part]["text"])
                        labels.append(score >= 0.5)
                        parts.append(part)
    return texts, labels, parts


def better_profanity_scorer() -> Scorer:
    from better_profanity import profanity

    profanity.load_censor_words()
    return lambda texts: [float(profanity.contains_profanity(t)) for t in texts]


def hatesonar_scorer() -> Scorer:
    # The ONNX model's string normalizer needs the en_US.UTF-8 locale (localedef + LOCPATH where absent).
    from hatesonar.api import Sonar

    sonar = Sonar()
    return lambda texts: [1.0 - float(sonar.ping(t)["classes"][2]["confidence"]) for t in texts]


def profanity_protector_scorer() -> Scorer:
    # Its own module imports sentence-transformers==2.2.2; embed the same way (mean pooling, L2 norm) with transformers.
    import joblib
    from transformers import AutoModel, AutoTokenizer

    data = Path(importlib.util.find_spec("profanity_protector").submodule_search_locations[0]) / "data"
    encoder_dir = data / "sentence-transformers_all-MiniLM-L6-v2"
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    encoder = AutoModel.from_pretrained(encoder_dir).eval()
    classifier = joblib.load(data / "model.joblib")
    # Pickled by an old scikit-learn that named the wrapped model `base_estimator`; current versions read `estimator`.
    classifier.estimator = classifier.base_estimator
    for calibrated in classifier.calibrated_classifiers_:
        calibrated.estimator = calibrated.base_estimator

    @torch.inference_mode()
    def score(texts: Sequence[str]) -> list[float]:
        out = []
        for start in range(0, len(texts), 64):
            batch = tokenizer(
                list(texts[start : start + 64]), padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
            out.extend(classifier.predict_proba(pooled.numpy())[:, 1].tolist())
        return out

    return score


# name, module that must be importable, factory, how to install it
CANDIDATES: list[tuple[str, str, Callable[[], Scorer], str]] = [
    (
        "alt-profanity-check 1.9.1 (steerlab default)",
        "profanity_check",
        lambda: ProfanityCheckScorer().scores,
        "pip install alt-profanity-check==1.9.1",
    ),
    (
        "better-profanity 0.7.0 (word list, 0/1)",
        "better_profanity",
        better_profanity_scorer,
        "pip install better-profanity==0.7.0",
    ),
    (
        "hatesonar 0.1.0 (1 - P(neither))",
        "hatesonar",
        hatesonar_scorer,
        "pip install --no-deps --target DIR hatesonar==0.1.0 onnxruntime==1.32.0 flatbuffers protobuf",
    ),
    (
        "profanity-protector 1.0.0 (MiniLM + calibrated classifier)",
        "profanity_protector",
        profanity_protector_scorer,
        "pip install --no-deps --target DIR profanity-protector==1.0.0",
    ),
    (
        "baseline: VADER negativity (-compound)",
        "vaderSentiment",
        lambda: lambda texts: [-s for s in vader_scores(texts)],
        "pip install vaderSentiment==3.3.2",
    ),
]


def measure(data: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    texts, labels, parts = load_texts(data)

    def auroc_of(scores: list[float], part: str) -> float:
        kept = [(s, y) for s, y, p in zip(scores, labels, parts, strict=False) if p == part]
        return auroc([s for s, _ in kept], [y for _, y in kept])

    rows, installs = [], []
    for name, module, factory, install in CANDIDATES:
        present = importlib.util.find_spec(module) is not None
        installs.append({"name": name, "install": install, "installed": present})
        if not present:
            continue
        start = time.perf_counter()
        scores = factory()(texts)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "name": name,
                "auroc": auroc(scores, labels),
                "auroc_prompts": auroc_of(scores, "prompt"),
                "auroc_continuations": auroc_of(scores, "continuation"),
                "flagged": sum(1 for x in scores if x >= 0.5),
                "seconds": seconds,
            }
        )
        print(f"{name}: AUROC {rows[-1]['auroc']:.4f} ({seconds:.1f} s)", file=sys.stderr)
    counts = {
        part: {
            "texts": parts.count(part),
            "positives": sum(y for y, p in zip(labels, parts, strict=False) if p == part),
        }
        for part in ("prompt", "continuation")
    }
    env = " ".join(f"{k}={os.environ[k]}" for k in ("LOCPATH", "PYTHONPATH") if k in os.environ)
    command = " ".join([env, "python", Path(sys.argv[0]).as_posix(), *sys.argv[1:]]).strip()
    return {
        "texts": len(texts),
        "positives": sum(labels),
        "parts": counts,
        "threads": threads,
        "scorers": rows,
        "candidates": installs,
        "command": command,
    }


def render(doc: Path = DOC) -> None:
    results = json.loads(RESULTS.read_text())
    rows = sorted(results["scorers"], key=lambda r: r["auroc"], reverse=True)
    table = [
        "| scorer | n texts | positives | AUROC | AUROC prompts | AUROC continuations | scored >= 0.5 | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    table += [
        f"| {r['name']} | {results['texts']} | {results['positives']} | {r['auroc']:.4f} | {r['auroc_prompts']:.4f} "
        f"| {r['auroc_continuations']:.4f} | {r['flagged']} | {r['seconds']:.1f} |"
        for r in rows
    ]
    prompts, continuations = results["parts"]["prompt"], results["parts"]["continuation"]
    installs = [
        f"- {c['name']}: `{c['install']}`" + ("" if c["installed"] else " (not installed: skipped)")
        for c in results["candidates"]
    ]
    text = [
        "# Offline toxicity scorers vs Perspective API",
        "",
        f"Texts: every prompt and continuation of `toxicity/{FILES[0]}` and `toxicity/{FILES[1]}` "
        "(RealToxicityPrompts via DecodingTrust) that has a Perspective toxicity; positive = Perspective toxicity >= 0.5.",
        f"AUROC is rank-based (Mann-Whitney, ties count 1/2); the prompt and continuation columns are the same scores "
        f"restricted to one part ({prompts['texts']} prompts with {prompts['positives']} positives, "
        f"{continuations['texts']} continuations with {continuations['positives']} positives). "
        f"'scored >= 0.5' counts the texts a scorer calls toxic at steerlab's threshold. Torch threads: {results['threads']}.",
        "",
        *table,
        "",
        f"Highest AUROC: {rows[0]['name']}. steerlab's default is alt-profanity-check: it ranks first or level with the "
        "best, is best on continuations (the kind of text steering produces), scores thousands of texts in about a "
        "second, and installs as an ordinary dependency.",
        "",
        "Candidates (installed into a folder on PYTHONPATH where `--target DIR` is shown, so they stay out of the "
        "project's environment; hatesonar's ONNX model needs the en_US.UTF-8 locale: "
        "`localedef -i en_US -f UTF-8 DIR/en_US.UTF-8` and `LOCPATH=DIR` where the system lacks it):",
        *installs,
        "",
        "Not benchmarked: `detoxify` downloads its checkpoint at run time (no hub here); `tox-block` and "
        "`toxic-comment-classifier` need TensorFlow; `toxicityclassifier` needs NLTK data downloads.",
        "",
        f"Made by: `{results['command']}`; rendered from experiments/toxicity_scorers/results.json by "
        "`python experiments/toxicity_scorers/run.py render`.",
        "",
    ]
    doc.write_text("\n".join(text), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["measure", "render"])
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.action == "measure":
        save_json(RESULTS, measure(args.data, args.threads))
    render(args.doc)


if __name__ == "__main__":
    main()
