"""(4) A layer x multiplier sweep of A/B behaviour scores on SmolLM2: steerlab's batched grid (one
`score_ab` call for every cell) vs running each cell separately (one call per cell), same items, same
vector, both choice orders. Also checks the two give the same probabilities.

Writes the `sweep` section of docs/benchmarks.md and benchmarks/results/sweep.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, alternate, fmt_range, header_block, pin_threads, save_result, table, write_section

GRID, PER_CELL = "batched grid (one call)", "each cell separately"


def spread(n_layers: int, count: int) -> list[int]:
    """`count` layers spread evenly over the model (all of them when count >= n_layers)."""
    if count >= n_layers:
        return list(range(n_layers))
    return sorted({round(i * (n_layers - 1) / max(1, count - 1)) for i in range(count)})


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--questions", type=int, default=50)
    parser.add_argument("--layers", type=int, default=30, help="how many layers, spread evenly")
    parser.add_argument("--multipliers", default="-2,-1,0,1,2")
    parser.add_argument("--vector-pairs", type=int, default=64, help="sycophancy pairs the swept vector is built from")
    parser.add_argument(
        "--no-doc", action="store_true", help="print only; write neither docs/benchmarks.md nor benchmarks/results"
    )
    args = parser.parse_args(argv)
    threads = pin_threads(args.threads)

    import torch

    from steerlab.data import load_pairs
    from steerlab.evaluation.ab import Cell, load_ab_items, score_ab
    from steerlab.methods.caa import CAAConfig, fit
    from steerlab.models import load_model

    lm = load_model(None)
    layers = spread(lm.num_layers, args.layers)
    mults = [float(m) for m in args.multipliers.split(",")]
    train = load_pairs(DATA / "caa" / "generate" / "sycophancy" / "generate_dataset.json")
    vector = fit(lm, train.subset(range(args.vector_pairs)), CAAConfig(layers=layers))
    items = load_ab_items(DATA / "caa" / "test" / "sycophancy" / "test_dataset_ab.json", limit=args.questions)
    cells = [Cell(layer, m) for layer in layers for m in mults]
    kept: dict[str, torch.Tensor] = {}

    def grid() -> None:
        kept[GRID] = score_ab(lm, items, vector, cells).match

    def per_cell() -> None:
        kept[PER_CELL] = torch.cat([score_ab(lm, items, vector, [cell]).match for cell in cells])

    warm = items[:2]
    print(f"[sweep] {len(layers)} layers x {len(mults)} multipliers, {len(items)} questions (x2 orders)")
    rounds = alternate(
        {GRID: grid, PER_CELL: per_cell},
        args.rounds,
        warmup={
            GRID: lambda: score_ab(lm, warm, vector, cells[:4]),
            PER_CELL: lambda: score_ab(lm, warm, vector, cells[:1]),
        },
    )
    diff = float((kept[GRID] - kept[PER_CELL]).abs().max())
    ratio = rounds.ratios(GRID, PER_CELL)
    results = {
        "threads": threads,
        "layers": layers,
        "multipliers": mults,
        "questions": len(items),
        "times": rounds.times,
        "ratio": ratio,
        "max_abs_diff": diff,
    }
    command = "python benchmarks/bench_sweep.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a != "--no-doc"
    )
    body = header_block(threads, command, title="Layer x multiplier sweep of A/B scores (SmolLM2-135M-Instruct, fp32)")
    body += (
        f""
        f"{len(layers)} layers ({', '.join(map(str, layers))}) x {len(mults)} multipliers ({args.multipliers}) = "
        f"{len(cells)} cells; the first {len(items)} CAA sycophancy test questions, each in both choice orders; a CAA "
        f"vector from {args.vector_pairs} sycophancy pairs. steerlab: `score_ab(lm, items, vector, cells)` once "
        "(each question's tokens run once, unsteered, and their KV cache serves every cell; the answer tokens of "
        "all cells run together with per-row multipliers). Separately: the same call once per cell. Median over "
        f"{args.rounds} alternated rounds after a warm-up (min-max).\n\n"
    )
    body += table(
        ["contender", "time", "grid / separate (per round)"],
        [
            [GRID, fmt_range(*rounds.summary(GRID), unit=" s"), fmt_range(*ratio, digits=3)],
            [PER_CELL, fmt_range(*rounds.summary(PER_CELL), unit=" s"), ""],
        ],
    )
    body += f"\nLargest difference in p(matching) between the two: {diff:.2e}.\n"
    if not args.no_doc:
        save_result("sweep", results)
        write_section("sweep", body)
    print(body)
    return results


if __name__ == "__main__":
    main()
