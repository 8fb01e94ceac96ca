"""Compare steering methods on sentiment and toxicity on SmolLM2, and write docs/results.md section 2.

Runs the library's `steerlab.compare` (what `steerlab compare` prints) for each task (same train pairs, prompts, tokens and strengths for every method;
all methods and the unsteered original in the same batches), keeps the report folders, and renders the
section from their report.json files. Re-render without re-running with `--write-only`.

    python bench/results_methods.py                    # run both tasks (~1 h on 2 busy CPU cores), write the section
    python bench/results_methods.py --write-only       # re-render from the saved report folders
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

import steerlab  # noqa: E402
from steerlab.evaluation.compare import prompting_verdict  # noqa: E402
from steerlab.generation import GenerationConfig  # noqa: E402
from steerlab.vector import write_atomic  # noqa: E402

TASKS = ("sentiment", "toxicity")
# LM-Steer trains, so it runs on its own with a CPU-sized budget (the settings its SmolLM2 test uses).
RUNS = {"main": {"methods": ["caa", "pca", "prompt", "vector_prompt"]},
        "lm_steer": {"methods": ["lm_steer"], "overrides": {"lm_steer": ["steps=200", "batch_size=4", "max_length=96"]}}}
SETTINGS = {"limit": 40, "max_new_tokens": 40, "train_limit": 200, "strengths": "0.2,0.4", "threads": 2, "seed": 0}
BEGIN, END = "<!-- results_methods section 2 begin -->", "<!-- results_methods section 2 end -->"
NEXT_SECTION = "<!-- results_ab section 3 begin -->"


def folder(out_root: Path, task: str, run: str) -> Path:
    return out_root / (task if run == "main" else f"{task}-{run}")


def run(out_root: Path, tasks: list[str], runs: list[str]) -> None:
    s = SETTINGS
    torch.set_num_threads(s["threads"])
    lm = steerlab.load_model()
    generation = GenerationConfig(max_new_tokens=s["max_new_tokens"], do_sample=True, top_p=0.9, seed=s["seed"])
    for task in tasks:
        for name in runs:
            out = folder(out_root, task, name)
            start = time.perf_counter()
            result = steerlab.compare(lm, task, **RUNS[name], limit=s["limit"], train_limit=s["train_limit"],
                                      strengths=[float(x) for x in s["strengths"].split(",")], generation=generation,
                                      batch_size=32, report=lambda line: print(line, file=sys.stderr))
            result.save(out, overwrite=True)
            (out / "wall_seconds.txt").write_text(f"{time.perf_counter() - start:.0f}\n")


def task_table(out_root: Path, task: str) -> list[str]:
    report = json.loads((folder(out_root, task, "main") / "report.json").read_text())
    s = report["settings"]
    methods = dict(s["methods"])
    o = report["original"]
    conditions = list(report["conditions"])
    walls = []
    for name in RUNS:
        path = folder(out_root, task, name)
        walls.append(f"{name} {(path / 'wall_seconds.txt').read_text().strip()} s"
                     if (path / "wall_seconds.txt").exists() else f"{name} ?")
        if name == "main" or not (path / "report.json").exists():
            continue
        extra = json.loads((path / "report.json").read_text())
        for label, info in extra["settings"]["methods"].items():
            info = dict(info, setting=f"{info['setting']} (own run; its original {extra['original']['behaviour']:+.3f})")
            methods[label] = info
        conditions += extra["conditions"]
    rows = [f"| original | unsteered | {o['behaviour']:+.3f} | | {o['fluency_entropy']:.2f} | {o['distinct_2']:.2f} | "
            f"{o['repetition']:.2f} | {_num(o['perplexity'])} |"]
    for c in conditions:
        x = c["scores"]
        rows.append(f"| {c['label']} | {methods[c['label']]['setting']} | {x['behaviour']:+.3f} | {c['effect']:+.3f} | "
                    f"{x['fluency_entropy']:.2f} | {x['distinct_2']:.2f} | {x['repetition']:.2f} | {_num(x['perplexity'])} |")
    extra = ""
    if "toxic_share" in o:
        shares = ", ".join(f"{c['label']} {c['scores']['toxic_share']:.0%}" for c in conditions)
        extra = f"\nShare of continuations scored toxic (P >= 0.5): original {o['toxic_share']:.0%}; {shares}.\n"
    wall = ", ".join(walls)
    fit_seconds = {label.split("@")[0]: v["fit_seconds"] for label, v in methods.items()}
    fits = ", ".join(f"{name} {sec:.0f} s" for name, sec in fit_seconds.items())
    head = [f"### {s['task']['name']}: {s['task']['metric_note']}, the task wants it "
            f"{'up' if s['task']['direction'] > 0 else 'down'}\n",
            f"{s['task']['prompts']} {s['task']['split']} prompts, train pairs: {s['train']['name']} "
            f"({s['train']['pairs']}); vectors at layer {s['layer']}; instruction: \"{s['instruction']}\". "
            f"Fit times: {fits}; whole runs: {wall}.\n",
            "| method | setting | behaviour | effect | entropy | distinct-2 | repetition | perplexity |",
            "|---|---|---|---|---|---|---|---|"]
    return head + rows + [extra, prompting_verdict(conditions), ""]


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def section(out_root: Path) -> str:
    s = SETTINGS
    lines = ["## 2. Steering methods side by side: sentiment and toxicity on SmolLM2-135M-Instruct\n",
             "Every method is fitted on the same train pairs and evaluated on the same held-out prompts, with the "
             "unsteered original generated in the same batches (row-seeded top-p 0.9 sampling, so each prompt's "
             "rows share their random draws and differ only by steering). Vector methods (CAA, PCA, vector-prompt) "
             "steer layer 15 at the same norm-relative strengths (added norm / the layer's mean residual norm on "
             "neutral text, as `steerlab sweep` defines strength); "
             "prompt steering adds one instruction toward the task's goal (before the text, as the task uses no "
             "chat template). Effect = behaviour change x the task's direction, so higher is better for both "
             "tasks. Fluency: weighted bigram/trigram entropy (bits), distinct-2 and repetition (share of tokens "
             "in repeated trigrams) of each continuation, and perplexity of the continuations under the unsteered "
             "model given their prompts (low perplexity alone can mean repetition; read it with the others).\n",
             f"Sizes: {s['limit']} prompts, {s['max_new_tokens']} new tokens, up to {s['train_limit']} train pairs, "
             f"strengths {s['strengths']}, {s['threads']} CPU threads on a shared 2-core machine (timings are "
             "inflated by other jobs). LM-Steer trains, so it ran on its own (same prompts, seeds and train pairs; "
             "200 steps of 4 texts cut to 96 tokens, rank 1000, epsilon 1e-3, applied at steer value 1); its effect "
             "is against the original of its own run.\n"]
    for task in TASKS:
        lines += task_table(out_root, task)
    lines.append("Commands: `python bench/results_methods.py` (runs `steerlab compare --task T --methods "
                 f"caa,pca,prompt,vector_prompt --limit {s['limit']} --max-new-tokens {s['max_new_tokens']} "
                 f"--train-limit {s['train_limit']} --strengths {s['strengths']} --sample --top-p 0.9 --seed {s['seed']}` "
                 "and the same with `--methods lm_steer --set lm_steer.steps=200 --set lm_steer.batch_size=4 "
                 "--set lm_steer.max_length=96`, for T = sentiment, toxicity, then writes this section); "
                 "`--write-only` re-renders it from the report folders.\n")
    return "\n".join(lines)


def write_section(out_root: Path, docs: Path) -> Path:
    path = docs / "results.md"
    text = path.read_text() if path.exists() else "# Measured results\n\n"
    block = f"{BEGIN}\n{section(out_root)}\n{END}"
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    elif NEXT_SECTION in text:
        text = text.replace(NEXT_SECTION, block + "\n\n" + NEXT_SECTION)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    write_atomic(path, text.encode(), overwrite=True)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "steerlab-out" / "results-methods", help="report folders")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="where results.md is written")
    parser.add_argument("--tasks", default=",".join(TASKS), help="tasks to run (default: both)")
    parser.add_argument("--runs", default=",".join(RUNS), help="which runs (default: main,lm_steer)")
    parser.add_argument("--write-only", action="store_true", help="only re-render the section from saved reports")
    args = parser.parse_args()
    if not args.write_only:
        run(args.out, [t for t in args.tasks.split(",") if t], [r for r in args.runs.split(",") if r])
    print(f"wrote {write_section(args.out, args.docs)}")
