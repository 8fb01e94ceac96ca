"""Run every benchmark (each in its own process) and rewrite docs/benchmarks.md's summary of goals.

    python benchmarks/run_all.py                 # full sizes (hours on a 2-core CPU)
    python benchmarks/run_all.py --profile medium # about 1.5 hours on an idle 2-core CPU
    python benchmarks/run_all.py --profile quick # small sizes: about 30 minutes on 2 cores shared with other jobs
    python benchmarks/run_all.py --summary-only  # rebuild the summary from benchmarks/results/*.json

A benchmark that fails is reported and the others still run; the summary marks its goals "not measured".
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, load_result, order_sections, table, write_section

PROFILES = {
    "full": {
        "bench_extraction.py": [],
        "bench_generation.py": [],
        "bench_sweep.py": [],
        "bench_lmsteer.py": [],
    },
    # About 1.5 hours on an idle 2-core CPU: the generation sizes, fewer pairs and questions.
    "medium": {
        "bench_extraction.py": ["--pairs", "64", "--scaling-sizes", "16,64,256", "--qwen-sizes", "16,64"],
        "bench_generation.py": [],
        "bench_sweep.py": ["--questions", "5"],
        "bench_lmsteer.py": [],
    },
    "quick": {
        "bench_extraction.py": ["--pairs", "6", "--scaling-sizes", "4,8,16", "--qwen-sizes", "8"],
        "bench_generation.py": ["--side-prompts", "8", "--side-new-tokens", "16", "--overhead-rounds", "7"],
        "bench_sweep.py": ["--questions", "2", "--layers", "2", "--multipliers=-1,0,1", "--vector-pairs", "16"],
        "bench_lmsteer.py": ["--batch", "4", "--length", "256", "--chunk", "256"],
    },
}
SECTIONS = [
    "about",
    "summary",
    "analysis",
    "gpu",
    "extraction",
    "scaling",
    "generation",
    "side_by_side",
    "sweep",
    "lmsteer",
]
ABOUT = """## About these benchmarks

How steerlab compares with the libraries people would otherwise use, measured in the same run on the
same machine, and with the physical limit where there is one. `make bench` runs everything at full size
(256 pairs, 32 prompts x 64 tokens, a 30 x 5 sweep over 50 questions, LM-Steer's default batch), which
takes hours on a 2-core CPU; `python benchmarks/run_all.py --profile medium` takes about 1.5 hours (64 pairs for the
peers, scaling to 256, a 30 x 5 sweep over 5 questions) and `make bench-quick` runs small sizes. The GPU
section comes from `benchmarks/bench_gpu.py`, run on a GPU machine and rendered here. Every script pins its thread count (shown in each section), warms each
contender up once, then times them in alternating order (A B C, C B A, ...); the tables give the median
over the rounds with min-max, and ratios are computed round by round before taking the median, because a
shared machine's speed drifts. Absolute times on a busy machine say little; the ratios are the result.
Raw per-round numbers are in benchmarks/results/*.json. The "analysis" section is written by hand (no script
rewrites it): where a goal is missed, and why.
"""
GPU_NOTE = (
    "No GPU machine was available to the session that produced these numbers, so the GPU part (a "
    "random-initialised 1B-7B Llama in bf16: extraction and steered generation tokens/s) was not measured."
)


def verdict(value: float, goal: float, at_least: bool) -> str:
    return "met" if (value >= goal if at_least else value <= goal) else "not met"


def rng(triple, digits: int = 2) -> str:
    med, lo, hi = triple
    return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def summary_rows() -> list[list[str]]:
    """One row per goal from the saved results; goals without results say so."""
    rows: list[list[str]] = []
    ext = load_result("extraction")
    if ext:
        for which, label in (("middle", "layer 15"), ("all", "all 30 layers")):
            res = ext.get(which)
            if not res:
                continue
            size = f"{ext['pairs']} pairs, {label}"
            for peer, goal in (("steering-vectors", 4.0), ("repeng", 4.0), ("per-example loop", 5.0)):
                if peer in res["ratios"]:
                    value = res["ratios"][peer]
                    rows.append(
                        [
                            f"1. extraction: {peer} time / steerlab's ({size})",
                            f">= {goal:g}x",
                            rng(value),
                            verdict(value[0], goal, True),
                        ]
                    )
            rows.append(
                [
                    f"1. extraction: steerlab / truncated forward ({size})",
                    "<= 0.6x",
                    rng(res["vs_limit"], 3),
                    verdict(res["vs_limit"][0], 0.6, False),
                ]
            )
            cos = min(res["cos_sv"].values())
            rows.append(
                [
                    f"1. cosine(steerlab, steering-vectors mean) ({label})",
                    ">= 0.999",
                    f"{cos:.6f}",
                    verdict(cos, 0.999, True),
                ]
            )
    else:
        rows.append(["1. extraction", "see issue", "not measured", "-"])
    gen = load_result("generation")
    if gen:
        for key in sorted(k for k in gen if k.startswith("overhead_b")):
            value = gen[key]["ratio"]
            rows.append(
                [
                    f"2. steered / unsteered generation, batch {key[10:]}, {gen['new_tokens']} tokens",
                    "<= 1.03x",
                    rng(value, 3),
                    verdict(value[0], 1.03, False),
                ]
            )
    else:
        rows.append(["2. steered generation overhead", "<= 1.03x", "not measured", "-"])
    side = load_result("side_by_side")
    if side:
        rows.append(
            [
                f"3. side by side, {side['prompts']} prompts x {side['new_tokens']} tokens: loop / batched",
                ">= 4x",
                rng(side["speedup"]),
                verdict(side["speedup"][0], 4.0, True),
            ]
        )
    else:
        rows.append(["3. side by side", ">= 4x", "not measured", "-"])
    sweep = load_result("sweep")
    if sweep:
        cells = len(sweep["layers"]) * len(sweep["multipliers"])
        rows.append(
            [
                f"4. sweep, {cells} cells x {sweep['questions']} questions: grid / per cell",
                "<= 0.3x",
                rng(sweep["ratio"], 3),
                verdict(sweep["ratio"][0], 0.3, False),
            ]
        )
    else:
        rows.append(["4. sweep", "<= 0.3x", "not measured", "-"])
    lms = load_result("lmsteer")
    if lms:
        what = f"batch {lms['batch']} x {lms['length']} tokens, rank {lms['rank']}, chunk {lms['chunk']}"
        rows.append(
            [
                f"5. LM-Steer step peak RSS, steerlab / full logits ({what})",
                "<= 0.5x",
                rng(lms["peak_ratio"], 3),
                verdict(lms["peak_ratio"][0], 0.5, False),
            ]
        )
        rows.append(
            [
                "5. LM-Steer step memory added by the step, steerlab / full logits",
                "<= 0.5x",
                rng(lms["added_ratio"], 3),
                verdict(lms["added_ratio"][0], 0.5, False),
            ]
        )
    else:
        rows.append(["5. LM-Steer memory", "<= 0.5x", "not measured", "-"])
    scal = load_result("scaling")
    if scal:
        for model in dict.fromkeys(r["model"] for r in scal):
            group = [r for r in scal if r["model"] == model]
            if len(group) > 1:
                per_tok = [r["steerlab"][0] / r["tokens"] for r in group]
                growth = per_tok[-1] / per_tok[0]
                rows.append(
                    [
                        f"6. {model}: time per prompt token, {group[-1]['pairs']} pairs vs {group[0]['pairs']}",
                        "linear (about 1x)",
                        f"{growth:.2f}x",
                        "linear or better" if growth <= 1.25 else "grows faster than linear",
                    ]
                )
        first = [r for r in scal if r["model"] == scal[0]["model"]]
        for other in (r for r in scal if r["model"] != scal[0]["model"]):
            same = [r for r in first if r["pairs"] == other["pairs"]]
            if same:
                ratio = (other["steerlab"][0] / other["tokens"]) / (same[0]["steerlab"][0] / same[0]["tokens"])
                rows.append(
                    [
                        f"6. {other['model']} / {same[0]['model']}: time per prompt token at the middle layer, "
                        f"{other['pairs']} pairs",
                        "report",
                        f"{ratio:.2f}x",
                        "-",
                    ]
                )
    return rows + gpu_rows()


def gpu_rows() -> list[list[str]]:
    """Goals 1 and 2 again on the GPU, from bench_gpu.py's saved measurement (when a GPU was available)."""
    gpu = load_result("gpu")
    rows: list[list[str]] = []
    for shape, entry in (gpu or {}).get("models", {}).items():
        where = f"{gpu['gpu']}, random {shape}, {gpu['dtype']}"
        for key, label in (("extraction_middle", "middle layer"), ("extraction_all", "all layers")):
            res = entry.get(key)
            if not res:
                continue
            size = f"{gpu['pairs']} pairs, {label}; {where}"
            for peer, goal in (("steering-vectors", 4.0), ("per-example loop", 5.0)):
                value = res["ratios"][peer]
                rows.append(
                    [
                        f"1. GPU extraction: {peer} time / steerlab's ({size})",
                        f">= {goal:g}x",
                        rng(value),
                        verdict(value[0], goal, True),
                    ]
                )
            rows.append(
                [
                    f"1. GPU extraction: steerlab / truncated forward ({size})",
                    "<= 0.6x",
                    rng(res["vs_limit"], 3),
                    verdict(res["vs_limit"][0], 0.6, False),
                ]
            )
        for batch, g in entry["generation"].items():
            rows.append(
                [
                    f"2. GPU steered / unsteered generation, batch {batch}, {gpu['new_tokens']} tokens ({where})",
                    "<= 1.03x",
                    rng(g["ratio"], 3),
                    verdict(g["ratio"][0], 1.03, False),
                ]
            )
    return rows


def write_summary(profile: str, failures: list[str], note: str = "") -> None:
    body = (
        "## Summary: each goal, the measured ratio (median over rounds, min-max), met or not\n\n"
        f"Profile: `{profile}` (see the sections below for sizes, commands, machine and versions).\n\n"
    )
    body += table(["goal", "target", "measured", "verdict"], summary_rows())
    if note:
        body += "\n" + note.strip() + "\n"
    if failures:
        body += "\nBenchmarks that failed in this run: " + ", ".join(failures) + ".\n"
    write_section("about", ABOUT)
    write_section("summary", body)
    if load_result("gpu") is None:
        write_section("gpu", "## GPU\n\n" + GPU_NOTE + "\n")
    order_sections(SECTIONS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=list(PROFILES), default="full")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated script names to run (default: all)")
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument("--note", default="", help="a line about this run to print under the summary table")
    args = parser.parse_args(argv)
    failures = []
    if not args.summary_only:
        for script, extra in PROFILES[args.profile].items():
            if args.only and script.removesuffix(".py") not in args.only.split(","):
                continue
            command = [sys.executable, str(REPO / "benchmarks" / script), "--threads", str(args.threads), *extra]
            print(f"== {' '.join(command[1:])}", flush=True)
            start = time.perf_counter()
            if subprocess.run(command).returncode != 0:
                failures.append(script)
            print(f"== {script}: {time.perf_counter() - start:.0f} s", flush=True)
    write_summary(args.profile, failures, args.note)
    print((REPO / "docs" / "benchmarks.md").read_text())


if __name__ == "__main__":
    main()
