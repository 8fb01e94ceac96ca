"""(5) One LM-Steer training step on SmolLM2: steerlab's bounded (chunked) loss vs a plain full-logits
implementation written here as the reference. Same texts, rank, batch and length; each contender runs in
a fresh process per round so its peak resident memory (ru_maxrss) is its own.

A step is what a first optimiser step costs: the frozen model's forward to the LM head's input, the
steered logits and cross-entropy over every trained token, backward into P1/P2, one Adam update.
Writes the `lmsteer` section of docs/benchmarks.md and benchmarks/results/lmsteer.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, fmt_range, header_block, pin_threads, save_result, table, write_section

STEERLAB, REFERENCE = "steerlab (chunked loss)", "reference (full logits)"


def long_texts(n: int, min_words: int) -> tuple[list[str], list[str]]:
    """n/2 positive and n/2 negative texts, each SST-2 dev sentences of one label joined until min_words long."""
    with open(DATA / "sentiment" / "sst2_dev.tsv", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    sides = {"1": [], "0": []}
    for label in sides:
        sentences = iter(s for s, lab in rows if lab == label)
        for _ in range(n // 2):
            words: list[str] = []
            while len(words) < min_words:
                words += next(sentences).split()
            sides[label].append(" ".join(words))
    return sides["1"], sides["0"]


def _status(key: str) -> int:
    """A memory figure from /proc/self/status, in bytes (Linux)."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s*(\d+)", text).group(1)) * 1024


def reset_peak() -> None:
    """Reset this process's resident high-water mark (VmHWM), so the next reading covers only what follows."""
    Path("/proc/self/clear_refs").write_text("5")


def run_steerlab(lm, positive, negative, args) -> None:
    """steerlab's LM-Steer fit for exactly one step over all the texts (one batch); returns trained tokens."""
    from steerlab.methods.lm_steer import LabelledTexts, LMSteerConfig, fit

    config = LMSteerConfig(
        rank=args.rank,
        batch_size=len(positive) + len(negative),
        max_length=args.length,
        chunk_size=args.chunk,
        steps=1,
        cache_hidden_states=False,
    )
    fit(lm, LabelledTexts(positive, negative), config, report=lambda _: None)


def run_reference(lm, positive, negative, args) -> None:
    """The plain way: frozen model to the head's input, steered full [batch, length, vocab] logits, one CE, backward."""
    import torch

    tok = lm.tokenizer
    texts = [(t, 1.0) for t in positive] + [(t, -1.0) for t in negative]
    ids = [tok(t, add_special_tokens=True)["input_ids"][: args.length] for t, _ in texts]
    width = max(len(i) for i in ids)
    input_ids = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    generator = torch.Generator().manual_seed(0)
    d = lm.hidden_size
    p1 = (torch.randn(d, args.rank, generator=generator) * 1e-2).requires_grad_()
    p2 = (torch.randn(d, args.rank, generator=generator) * 1e-2).requires_grad_()
    optimizer = torch.optim.Adam([p1, p2], lr=1e-2)
    values = torch.tensor([v for _, v in texts])[:, None, None]
    for p in lm.model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        hidden = lm.model.get_decoder()(input_ids=input_ids, attention_mask=mask).last_hidden_state
    steered = hidden + 1e-3 * values * ((hidden @ p1) @ p2.T)
    logits = lm.model.lm_head(steered)  # [batch, length, vocab], all at once
    labels = input_ids.masked_fill(mask == 0, -100)[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1))
    loss.backward()
    optimizer.step()


def worker(which: str, args) -> None:
    """One process, one contender: load, a small warm-up step, then the measured step; print JSON."""
    pin_threads(args.threads)
    from steerlab.models import load_model

    lm = load_model(None)
    positive, negative = long_texts(args.batch, args.length)
    warm_pos, warm_neg = [t[:200] for t in positive[:1]], [t[:200] for t in negative[:1]]
    fn = run_steerlab if which == "steerlab" else run_reference
    fn(lm, warm_pos, warm_neg, args)
    tokens = sum(min(len(lm.tokenizer(t)["input_ids"]), args.length) - 1 for t in positive + negative)
    reset_peak()
    before = _status("VmRSS")
    start = time.perf_counter()
    fn(lm, positive, negative, args)
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    print(json.dumps({"seconds": seconds, "tokens": tokens, "peak_rss": peak, "added": peak - before}))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rank", type=int, default=1000, help="LMSteerConfig's default")
    parser.add_argument("--batch", type=int, default=32, help="texts per step (LMSteerConfig's default)")
    parser.add_argument("--length", type=int, default=256, help="tokens per text (LMSteerConfig's max_length)")
    parser.add_argument("--chunk", type=int, default=2048, help="steerlab's chunk_size (LMSteerConfig's default)")
    parser.add_argument("--worker", choices=["steerlab", "reference"], help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-doc", action="store_true", help="print only; write neither docs/benchmarks.md nor benchmarks/results"
    )
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args)
        return {}
    threads = pin_threads(args.threads)
    passed = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--no-doc"]
    runs: dict[str, list[dict]] = {STEERLAB: [], REFERENCE: []}
    for r in range(args.rounds):
        order = [("steerlab", STEERLAB), ("reference", REFERENCE)]
        for key, name in order if r % 2 == 0 else order[::-1]:
            done = subprocess.run([sys.executable, __file__, "--worker", key, *passed], capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{name} worker failed:\n{done.stderr[-3000:]}")
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            run = runs[name][-1]
            print(
                f"  round {r + 1}/{args.rounds} {name}: {run['seconds']:.2f} s, peak RSS {run['peak_rss'] / 2**20:.0f} MiB"
            )

    def stat(name: str, key: str, scale: float = 1.0) -> tuple[float, float, float]:
        values = [run[key] * scale for run in runs[name]]
        return statistics.median(values), min(values), max(values)

    def ratio(key: str) -> tuple[float, float, float]:
        values = [a[key] / b[key] for a, b in zip(runs[STEERLAB], runs[REFERENCE], strict=False)]
        return statistics.median(values), min(values), max(values)

    mib = 1 / 2**20
    rows = [
        [
            name,
            fmt_range(*stat(name, "peak_rss", mib), digits=0, unit=" MiB"),
            fmt_range(*stat(name, "added", mib), digits=0, unit=" MiB"),
            fmt_range(*stat(name, "seconds"), unit=" s"),
            f"{runs[name][0]['tokens'] / stat(name, 'seconds')[0]:.0f}",
        ]
        for name in runs
    ]
    results = {
        "runs": runs,
        "threads": threads,
        "rank": args.rank,
        "batch": args.batch,
        "length": args.length,
        "chunk": args.chunk,
        "peak_ratio": ratio("peak_rss"),
        "added_ratio": ratio("added"),
        "time_ratio": ratio("seconds"),
    }
    body = header_block(
        threads,
        "python benchmarks/bench_lmsteer.py " + " ".join(passed),
        title="LM-Steer: one training step, bounded loss vs full logits (SmolLM2-135M-Instruct, fp32)",
    )
    body += (
        f""
        f"{args.batch} texts (half positive, half negative SST-2 dev sentences joined to at least {args.length} "
        f"words), cut at {args.length} tokens; rank {args.rank}; steerlab's chunk_size {args.chunk} tokens. Each "
        f"contender in a fresh process per round ({args.rounds} rounds, alternated), after a one-text warm-up step. "
        "Peak RSS is the resident high-water mark during the measured step (reset just before it; the loaded "
        "model and runtime included); 'added' is that peak minus the resident size just before the step.\n\n"
    )
    body += table(["contender", "peak RSS", "added by the step", "step time", "trained tokens/s"], rows)
    body += (
        f"\nsteerlab / reference, per round: peak RSS {fmt_range(*results['peak_ratio'], digits=3)}, added memory "
        f"{fmt_range(*results['added_ratio'], digits=3)}, step time {fmt_range(*results['time_ratio'], digits=3)}.\n"
    )
    if not args.no_doc:
        save_result("lmsteer", results)
        write_section("lmsteer", body)
    print(body)
    return results


if __name__ == "__main__":
    main()
