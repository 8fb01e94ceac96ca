"""Generation benchmarks on SmolLM2: (2) steered vs unsteered greedy generation at batch 1 and 8, and
(3) side-by-side original + steered output for N prompts, steerlab's batched call vs a per-prompt loop.

Every row is forced to the full number of new tokens (generation_config.min_new_tokens), so steered and
unsteered runs do the same work whatever text they produce. Writes the `generation` and `side_by_side`
sections of docs/benchmarks.md and their benchmarks/results/*.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, alternate, fmt_range, header_block, pin_threads, save_result, table, write_section


def neutral_prompts(n: int) -> list[str]:
    """The first n OpenWebText neutral prompts (the DExperts / LM-Steer sentiment set)."""
    prompts = []
    with open(DATA / "sentiment" / "neutral_prompts.jsonl", encoding="utf-8") as f:
        for line in f:
            prompts.append(json.loads(line)["prompt"]["text"].strip())
            if len(prompts) == n:
                break
    return prompts


def demo_vector(lm, layer: int):
    """A real CAA vector: the shipped sentiment pairs at one layer."""
    from steerlab.data import demo_dataset_path, load_pairs
    from steerlab.methods.caa import CAAConfig, fit

    return fit(lm, load_pairs(demo_dataset_path()), CAAConfig(layers=[layer]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument(
        "--side-prompts", type=int, default=32, help="prompts for the side-by-side comparison (0 = skip it)"
    )
    parser.add_argument("--side-new-tokens", type=int, default=None, help="new tokens there (default: --new-tokens)")
    parser.add_argument("--batch-sizes", default="1,8", help="batch sizes for the overhead table ('' = skip it)")
    parser.add_argument(
        "--overhead-rounds", type=int, default=None, help="rounds for the overhead table (default --rounds)"
    )
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--multiplier", type=float, default=4.0)
    parser.add_argument(
        "--no-doc", action="store_true", help="print only; write neither docs/benchmarks.md nor benchmarks/results"
    )
    args = parser.parse_args(argv)
    threads = pin_threads(args.threads)

    from steerlab.generation import GenerationConfig, generate
    from steerlab.models import load_model
    from steerlab.steering import SteeringSpec

    lm = load_model(None)
    spec = SteeringSpec(demo_vector(lm, args.layer), multiplier=args.multiplier, layers=[args.layer])
    batches = [int(b) for b in args.batch_sizes.split(",") if b]
    prompts = neutral_prompts(max([args.side_prompts, *batches]))
    command = "python benchmarks/bench_generation.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a != "--no-doc"
    )

    def run(chunk, steering, tokens, **kw) -> None:
        lm.model.generation_config.min_new_tokens = tokens  # every row generates exactly `tokens`
        generate(
            lm, chunk, steering, config=GenerationConfig(max_new_tokens=tokens), batch_size=max(8, len(chunk)), **kw
        )

    results = {}
    if batches:
        results["generation"] = overhead(run, prompts, spec, batches, args, threads, command)
    if args.side_prompts:
        results["side_by_side"] = side_by_side(run, lm, prompts[: args.side_prompts], spec, args, threads, command)
    return results


def overhead(run, prompts, spec, batches, args, threads, command) -> dict:
    """(2) steered / unsteered time per batch size; writes the `generation` section."""
    rounds_n = args.overhead_rounds or args.rounds
    results: dict = {
        "threads": threads,
        "new_tokens": args.new_tokens,
        "layer": args.layer,
        "multiplier": args.multiplier,
        "rounds": rounds_n,
    }
    rows = []
    for batch in batches:
        chunk = prompts[:batch]
        print(f"[generation] batch {batch}: steered vs unsteered, {args.new_tokens} new tokens")
        rounds = alternate(
            {
                "unsteered": functools.partial(run, chunk, None, args.new_tokens),
                "steered": functools.partial(run, chunk, spec, args.new_tokens),
            },
            rounds_n,
            warmup={
                "unsteered": functools.partial(run, chunk, None, 4),
                "steered": functools.partial(run, chunk, spec, 4),
            },
        )
        ratio = rounds.ratios("steered", "unsteered")
        tps = {name: batch * args.new_tokens / rounds.summary(name)[0] for name in rounds.times}
        results[f"overhead_b{batch}"] = {"times": rounds.times, "ratio": ratio}
        rows.append(
            [
                batch,
                fmt_range(*rounds.summary("unsteered"), unit=" s"),
                fmt_range(*rounds.summary("steered"), unit=" s"),
                f"{tps['unsteered']:.1f} / {tps['steered']:.1f}",
                fmt_range(*ratio, digits=3),
            ]
        )
    body = header_block(threads, command, title="Steered vs unsteered greedy generation (SmolLM2-135M-Instruct, fp32)")
    body += (
        f""
        f"{args.new_tokens} new tokens per row (forced with min_new_tokens, so both do the same work), CAA sentiment "
        f"vector at layer {args.layer}, multiplier {args.multiplier}, all positions. Median over {rounds_n} alternated "
        "rounds after a warm-up (min-max).\n\n"
    )
    body += table(
        ["batch", "unsteered", "steered", "tokens/s unsteered / steered", "steered / unsteered (per round)"], rows
    )
    if not args.no_doc:
        save_result("generation", results)
        write_section("generation", body)
    print(body)
    return results


def side_by_side(run, lm, side, spec, args, threads, command) -> dict:
    """(3) original + steered for every prompt: one batched call vs a per-prompt loop; writes `side_by_side`."""
    from steerlab.generation import GenerationConfig, generate

    tokens = args.side_new_tokens or args.new_tokens
    batched_name, loop_name = "steerlab batched (batch 8 + originals)", "per-prompt loop"
    print(f"[generation] side by side, {len(side)} prompts, {tokens} new tokens")

    def batched() -> None:
        lm.model.generation_config.min_new_tokens = tokens
        generate(
            lm, side, spec, generate_orig_output=True, config=GenerationConfig(max_new_tokens=tokens), batch_size=8
        )

    def loop() -> None:
        for prompt in side:
            run([prompt], None, tokens)
            run([prompt], spec, tokens)

    rounds = alternate(
        {batched_name: batched, loop_name: loop},
        args.rounds,
        warmup={
            batched_name: lambda: run(side[:8], spec, 4, generate_orig_output=True),
            loop_name: lambda: run(side[:1], None, 4),
        },
    )
    speedup = rounds.ratios(loop_name, batched_name)
    results = {
        "threads": threads,
        "prompts": len(side),
        "new_tokens": tokens,
        "times": rounds.times,
        "speedup": speedup,
    }
    body = header_block(
        threads,
        command,
        title=f"Side by side: original + steered for {len(side)} prompts, {tokens} new tokens (SmolLM2, fp32)",
    )
    body += (
        f""
        "steerlab: `generate(..., generate_orig_output=True, batch_size=8)` (each batch: 8 steered rows + their 8 "
        "originals in one pass). Loop: for each prompt, generate the original, then the steered text (batch 1). "
        f"Median over {args.rounds} alternated rounds after a warm-up (min-max).\n\n"
    )
    body += table(
        ["contender", "time", "loop / batched (per round)"],
        [
            ["steerlab batched", fmt_range(*rounds.summary(batched_name), unit=" s"), ""],
            [loop_name, fmt_range(*rounds.summary(loop_name), unit=" s"), fmt_range(*speedup)],
        ],
    )
    if not args.no_doc:
        save_result("side_by_side", results)
        write_section("side_by_side", body)
    print(body)
    return results


if __name__ == "__main__":
    main()
