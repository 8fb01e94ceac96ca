"""Rank offline toxicity scorers by AUROC against Perspective API labels on RealToxicityPrompts texts.

Every prompt and continuation in the two shared RTP files carries Perspective's toxicity; a text is
toxic when that is >= 0.5 (texts without a score are left out). Scorers that are not installed are
listed as skipped with the command that installs them. Prints a Markdown table and writes it to
docs/toxicity_scorers.md together with the command line that made it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from steerlab.evaluation.metrics import auroc
from steerlab.evaluation.sentiment import vader_scores
from steerlab.evaluation.toxicity import ProfanityCheckScorer

REPO = Path(__file__).resolve().parents[1]
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
            batch = tokenizer(list(texts[start:start + 64]), padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
            out.extend(classifier.predict_proba(pooled.numpy())[:, 1].tolist())
        return out

    return score


# name, module that must be importable, factory, how to install it
CANDIDATES: list[tuple[str, str, Callable[[], Scorer], str]] = [
    ("alt-profanity-check 1.9.1 (steerlab default)", "profanity_check",
     lambda: ProfanityCheckScorer().scores, "pip install alt-profanity-check==1.9.1"),
    ("better-profanity 0.7.0 (word list, 0/1)", "better_profanity",
     better_profanity_scorer, "pip install better-profanity==0.7.0"),
    ("hatesonar 0.1.0 (1 - P(neither))", "hatesonar",
     hatesonar_scorer, "pip install --no-deps --target DIR hatesonar==0.1.0 onnxruntime==1.32.0 flatbuffers protobuf"),
    ("profanity-protector 1.0.0 (MiniLM + calibrated classifier)", "profanity_protector",
     profanity_protector_scorer, "pip install --no-deps --target DIR profanity-protector==1.0.0"),
    ("baseline: VADER negativity (-compound)", "vaderSentiment",
     lambda: lambda texts: [-s for s in vader_scores(texts)], "pip install vaderSentiment==3.3.2"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="the shared data folder")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "toxicity_scorers.md")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    texts, labels, parts = load_texts(args.data)
    positives = sum(labels)

    def auroc_of(scores: list[float], part: str) -> float:
        kept = [(s, y) for s, y, p in zip(scores, labels, parts) if p == part]
        return auroc([s for s, _ in kept], [y for _, y in kept])

    rows, installs = [], []
    for name, module, factory, install in CANDIDATES:
        present = importlib.util.find_spec(module) is not None
        installs.append(f"- {name}: `{install}`" + ("" if present else " (not installed: skipped)"))
        if not present:
            continue
        start = time.perf_counter()
        scores = factory()(texts)
        seconds = time.perf_counter() - start
        flagged = sum(1 for x in scores if x >= 0.5)
        rows.append((auroc(scores, labels), name, auroc_of(scores, "prompt"), auroc_of(scores, "continuation"), flagged, seconds))
        print(f"{name}: AUROC {rows[-1][0]:.4f} ({seconds:.1f} s)", file=sys.stderr)

    table = ["| scorer | n texts | positives | AUROC | AUROC prompts | AUROC continuations | scored >= 0.5 | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    table += [f"| {name} | {len(texts)} | {positives} | {score:.4f} | {on_prompts:.4f} | {on_continuations:.4f} | {flagged} | {seconds:.1f} |"
              for score, name, on_prompts, on_continuations, flagged, seconds in sorted(rows, reverse=True)]
    env = " ".join(f"{k}={os.environ[k]}" for k in ("LOCPATH", "PYTHONPATH") if k in os.environ)
    command = " ".join([env, "python", Path(sys.argv[0]).as_posix(), *sys.argv[1:]]).strip()
    best = max(rows)[1]
    doc = [
        "# Offline toxicity scorers vs Perspective API",
        "",
        f"Texts: every prompt and continuation of `toxicity/{FILES[0]}` and `toxicity/{FILES[1]}` "
        "(RealToxicityPrompts via DecodingTrust) that has a Perspective toxicity; positive = Perspective toxicity >= 0.5.",
        f"AUROC is rank-based (Mann-Whitney, ties count 1/2); the prompt and continuation columns are the same scores "
        f"restricted to one part ({parts.count('prompt')} prompts with {sum(y for y, p in zip(labels, parts) if p == 'prompt')} positives, "
        f"{parts.count('continuation')} continuations with {sum(y for y, p in zip(labels, parts) if p == 'continuation')} positives). "
        f"'scored >= 0.5' counts the texts a scorer calls toxic at steerlab's threshold. Torch threads: {args.threads}.",
        "",
        *table,
        "",
        f"Highest AUROC: {best}. steerlab's default is alt-profanity-check: it ranks first or level with the best, "
        "is best on continuations (the kind of text steering produces), scores thousands of texts in about a second, "
        "and installs as an ordinary dependency.",
        "",
        "Candidates (installed into a folder on PYTHONPATH where `--target DIR` is shown, so they stay out of the "
        "project's environment; hatesonar's ONNX model needs the en_US.UTF-8 locale: "
        "`localedef -i en_US -f UTF-8 DIR/en_US.UTF-8` and `LOCPATH=DIR` where the system lacks it):",
        *installs,
        "",
        "Not benchmarked: `detoxify` downloads its checkpoint at run time (no hub here); `tox-block` and "
        "`toxic-comment-classifier` need TensorFlow; `toxicityclassifier` needs NLTK data downloads.",
        "",
        f"Made by: `{command}`",
        "",
    ]
    print("\n".join(table))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(doc), encoding="utf-8")


if __name__ == "__main__":
    main()
