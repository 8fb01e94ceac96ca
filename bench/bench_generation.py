"""Generation benchmarks on SmolLM2: (2) steered vs unsteered greedy generation at batch 1 and 8, and
(3) side-by-side original + steered output for N prompts, steerlab's batched call vs a per-prompt loop.

Every row is forced to the full number of new tokens (generation_config.min_new_tokens), so steered and
unsteered runs do the same work whatever text they produce. Writes the `generation` section of
docs/benchmarks.md and bench/results/generation.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, alternate, fmt_range, header_block, pin_threads, save_result, table, write_section  # noqa: E402


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
    parser.add_argument("--side-prompts", type=int, default=32, help="prompts for the side-by-side comparison")
    parser.add_argument("--side-new-tokens", type=int, default=None, help="new tokens there (default: --new-tokens)")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--multiplier", type=float, default=4.0)
    parser.add_argument("--no-doc", action="store_true", help="print only; write neither docs/benchmarks.md nor bench/results")
    args = parser.parse_args(argv)
    threads = pin_threads(args.threads)

    from steerlab.generation import GenerationConfig, generate
    from steerlab.models import load_model
    from steerlab.steering import SteeringSpec

    lm = load_model(None)
    spec = SteeringSpec(demo_vector(lm, args.layer), multiplier=args.multiplier, layers=[args.layer])
    side_tokens = args.side_new_tokens or args.new_tokens
    prompts = neutral_prompts(max(args.side_prompts, max(int(b) for b in args.batch_sizes.split(","))))
    results: dict = {"threads": threads, "new_tokens": args.new_tokens, "layer": args.layer, "multiplier": args.multiplier}

    def run(chunk, steering, tokens, **kw) -> None:
        lm.model.generation_config.min_new_tokens = tokens
        generate(lm, chunk, steering, config=GenerationConfig(max_new_tokens=tokens), batch_size=max(8, len(chunk)), **kw)

    overhead_rows = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        chunk = prompts[:batch]
        print(f"[generation] batch {batch}: steered vs unsteered, {args.new_tokens} new tokens")
        rounds = alternate({"unsteered": lambda: run(chunk, None, args.new_tokens),
                            "steered": lambda: run(chunk, spec, args.new_tokens)}, args.rounds,
                           warmup={"unsteered": lambda: run(chunk, None, 4), "steered": lambda: run(chunk, spec, 4)})
        ratio = rounds.ratios("steered", "unsteered")
        tps = {name: batch * args.new_tokens / rounds.summary(name)[0] for name in rounds.times}
        results[f"overhead_b{batch}"] = {"times": rounds.times, "ratio": ratio}
        overhead_rows.append([batch, fmt_range(*rounds.summary("unsteered"), unit=" s"), fmt_range(*rounds.summary("steered"), unit=" s"),
                              f"{tps['unsteered']:.1f} / {tps['steered']:.1f}", fmt_range(*ratio, digits=3)])

    side = prompts[: args.side_prompts]
    print(f"[generation] side by side, {len(side)} prompts, {side_tokens} new tokens")

    def batched() -> None:
        lm.model.generation_config.min_new_tokens = side_tokens
        generate(lm, side, spec, generate_orig_output=True, config=GenerationConfig(max_new_tokens=side_tokens), batch_size=8)

    def loop() -> None:
        for prompt in side:
            run([prompt], None, side_tokens)
            run([prompt], spec, side_tokens)

    rounds = alternate({"steerlab batched (batch 8 + originals)": batched, "per-prompt loop": loop}, args.rounds,
                       warmup={"steerlab batched (batch 8 + originals)": lambda: run(side[:8], spec, 4, generate_orig_output=True),
                               "per-prompt loop": lambda: run(side[:1], None, 4)})
    speedup = rounds.ratios("per-prompt loop", "steerlab batched (batch 8 + originals)")
    results["side_by_side"] = {"prompts": len(side), "new_tokens": side_tokens, "times": rounds.times, "speedup": speedup}
    results["overhead_rows"] = overhead_rows

    command = "python bench/bench_generation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    body = header_block(threads, command.strip())
    body += (f"## Steered vs unsteered greedy generation (SmolLM2-135M-Instruct, fp32)\n\n"
             f"{args.new_tokens} new tokens per row (forced), CAA sentiment vector at layer {args.layer}, multiplier "
             f"{args.multiplier}, all positions. Median over {args.rounds} alternated rounds after a warm-up (min-max).\n\n")
    body += table(["batch", "unsteered", "steered", "tokens/s unsteered / steered", "steered / unsteered (per round)"], overhead_rows)
    body += (f"\n## Side by side: original + steered for {len(side)} prompts, {side_tokens} new tokens\n\n"
             "steerlab: `generate(..., generate_orig_output=True, batch_size=8)` (each batch: 8 steered rows + their 8 "
             "originals). Loop: for each prompt, generate the original, then the steered text (batch 1).\n\n")
    body += table(["contender", "time", "loop / batched (per round)"],
                  [["steerlab batched", fmt_range(*rounds.summary("steerlab batched (batch 8 + originals)"), unit=" s"), ""],
                   ["per-prompt loop", fmt_range(*rounds.summary("per-prompt loop"), unit=" s"), fmt_range(*speedup)]])
    if not args.no_doc:
        save_result("generation", results)
        write_section("generation", body)
    print(body)
    return results


if __name__ == "__main__":
    main()
