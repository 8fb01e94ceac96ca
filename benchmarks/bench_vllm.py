"""Steering on vLLM, compiled and eager, vs today's `steerlab serve` (SmolLM2-135M-Instruct, fp32, CPU).

Runs in the vLLM venv: `make bench-vllm` (or `.venv-vllm/bin/python benchmarks/bench_vllm.py`). 64 chat requests x
64 new tokens, 8 distinct steering configs (request i takes config i % 8):

1. Offline (`LLM.generate`), two engines side by side: compiled (vLLM's default, torch.compile with steerlab's op
   in the graph) and eager (`enforce_eager=True`); each runs the 64 requests steered and unsteered, `ignore_eos` so
   every row decodes exactly 64 tokens, prefix caching off so no round reuses another's prompt KV; the four
   contenders alternate round by round. Engine start times are measured too.
2. HTTP: the same 64 requests sent at once to `steerlab serve` on the HF batcher and on the compiled vLLM engine
   (same app, same validation, `create_app(batcher=VLLMBatcher(...))`), served by uvicorn on 127.0.0.1; throughput
   in completion tokens/s (rows end at EOS or 64 tokens) and per-request latency from send to last byte.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    alternate,
    fmt_range,
    header_block,
    pin_threads,
    save_result,
    table,
    uvicorn_in_thread,
    write_section,
)

N_REQUESTS, MAX_TOKENS = 64, 64


def configs(vector_name: str) -> list[dict]:
    """8 distinct steering configs: strengths, signs, layer sets and positions."""
    return [
        {"vector": vector_name, "multiplier": m, "layers": layers, "positions": pos}
        for m, layers, pos in [
            (4.0, [15], "all"),
            (-4.0, [15], "all"),
            (2.0, [10, 15], "all"),
            (-2.0, [10, 15], "all"),
            (6.0, [10], "prompt"),
            (3.0, [15, 20], "generated"),
            (1.5, [5, 10, 15, 20], "all"),
            (-6.0, [20], "generated"),
        ]
    ]


def prompts() -> list[str]:
    import json
    from importlib.resources import files

    lines = (files("steerlab") / "resources" / "sentiment_pairs.jsonl").read_text().splitlines()
    return [json.loads(line)["prompt"] for line in lines if line.strip()][:N_REQUESTS]


def offline_rounds(engines: dict, lm, items, rounds: int):
    """Wall seconds of the 64 requests with and without steering on each engine, alternating the order."""
    from steerlab.generation import encode_prompts

    rows = encode_prompts(lm, prompts())

    def run(engine, steered: bool, n: int = len(rows)):
        sp = engine._vllm.SamplingParams
        params = [
            sp(
                max_tokens=MAX_TOKENS,
                temperature=0.0,
                ignore_eos=True,
                extra_args={"steerlab": [items[i % len(items)]]} if steered else None,
            )
            for i in range(n)
        ]
        start = time.perf_counter()
        outs = engine.llm.generate([{"prompt_token_ids": r} for r in rows[:n]], params, use_tqdm=False)
        assert all(len(o.outputs[0].token_ids) == MAX_TOKENS for o in outs)
        return time.perf_counter() - start

    contenders, warmup = {}, {}
    for mode, engine in engines.items():
        for steered in (True, False):
            name = f"{mode} {'steered' if steered else 'unsteered'}"
            contenders[name] = lambda e=engine, s=steered: run(e, s)
            # Warm-up on 8 requests (steer files read, directions converted): the full runs take a while.
            warmup[name] = lambda e=engine, s=steered: run(e, s, 8)
    return alternate(contenders, rounds, warmup=warmup)


async def _load(url: str, items: list[dict]) -> dict:
    import httpx

    async with httpx.AsyncClient(timeout=1800) as client:

        async def one(i: int, prompt: str):
            body = {
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
                "steering": [items[i % len(items)]],
            }
            start = time.perf_counter()
            reply = await client.post(f"{url}/v1/chat/completions", json=body)
            reply.raise_for_status()
            return time.perf_counter() - start, reply.json()["usage"]["completion_tokens"]

        start = time.perf_counter()
        done = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts())))
        wall = time.perf_counter() - start
    latencies = sorted(t for t, _ in done)
    tokens = sum(n for _, n in done)
    return {
        "wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "requests_per_s": len(done) / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[int(0.95 * (len(latencies) - 1))],
    }


def http_run(lm, registry, batcher) -> dict:
    from steerlab.server.app import create_app

    url, server, thread = uvicorn_in_thread(create_app(lm, registry, batcher=batcher))
    try:
        return asyncio.run(_load(url, [{**c, "vector": "sentiment"} for c in configs("sentiment")]))
    finally:
        server.should_exit = True
        thread.join(120)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of the steered/unsteered runs")
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="threads of each engine: torch threads of the HF path, cores bound to vLLM's worker",
    )
    parser.add_argument("--no-write", action="store_true", help="print, do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    threads = pin_threads(args.threads)
    # vLLM's CPU worker binds its OpenMP threads to cores; give it as many as the HF side gets (cores 0..n-1).
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{threads - 1}" if threads > 1 else "0")
    import tempfile

    import steerlab
    from steerlab.data import load_pairs
    from steerlab.interop.vllm.engine import VLLMEngine
    from steerlab.methods.caa import CAAConfig, fit
    from steerlab.server.registry import VectorRegistry
    from steerlab.server.vllm_batcher import VLLMBatcher
    from steerlab.vector import content_hash

    head = header_block(
        threads,
        "make bench-vllm",
        {"vllm-cpu": _version("vllm-cpu")},
        title="Steering on vLLM vs steerlab serve (SmolLM2-135M-Instruct, fp32, CPU)",
    )
    load_start = os.getloadavg()
    lm = steerlab.load_model()
    from importlib.resources import files

    vector = fit(
        lm,
        load_pairs(str(files("steerlab") / "resources" / "sentiment_pairs.jsonl")),
        CAAConfig(layers=[5, 10, 15, 20]),
        task="sentiment",
    )
    folder = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    vector.save(folder / "sentiment.safetensors")
    engines, engine_start = {}, {}
    try:
        for mode, eager in (("compiled", False), ("eager", True)):
            start = time.perf_counter()
            engines[mode] = VLLMEngine(lm, steers_dir=folder, enable_prefix_caching=False, enforce_eager=eager)
            engine_start[mode] = time.perf_counter() - start
        rounds = offline_rounds(engines, lm, configs(content_hash(vector)), args.rounds)
        engines.pop("eager").close()
        registry = VectorRegistry.from_dir(lm, folder)
        http = {"vLLM (steerlab serve --engine vllm)": http_run(lm, registry, VLLMBatcher(lm, engines["compiled"]))}
    finally:
        for engine in engines.values():
            engine.close()
    from steerlab.server.batcher import Batcher

    http["HF (steerlab serve, --max-batch 16)"] = http_run(lm, registry, Batcher(lm, max_batch=16))
    load_end = os.getloadavg()
    result = {
        "rounds": rounds.times,
        "http": http,
        "engine_start_s": engine_start,
        "load_start": load_start,
        "load_end": load_end,
    }
    body = _render(head, rounds, http, engine_start, load_start, load_end)
    save_result("vllm", result)
    print(body)
    if not args.no_write:
        write_section("vllm", body)
    return result


def _render(head, rounds, http, engine_start, load_start, load_end) -> str:
    ratio = rounds.ratios("compiled steered", "compiled unsteered")
    eager_ratio = rounds.ratios("eager steered", "eager unsteered")
    speedup = rounds.ratios("eager steered", "compiled steered")  # time ratio = compiled's throughput over eager's
    plain_speedup = rounds.ratios("eager unsteered", "compiled unsteered")  # what compiling itself gives here
    rows = [
        [
            name,
            f"{r['wall_s']:.1f}",
            f"{r['tokens']}",
            f"{r['tokens_per_s']:.1f}",
            f"{r['requests_per_s']:.2f}",
            f"{r['p50_s']:.1f}",
            f"{r['p95_s']:.1f}",
        ]
        for name, r in http.items()
    ]
    hf = http["HF (steerlab serve, --max-batch 16)"]["tokens_per_s"]
    vl = http["vLLM (steerlab serve --engine vllm)"]["tokens_per_s"]
    # The load before anything ran says whether other jobs shared the cores; at the end it includes our own threads.
    busy = load_start[0] > 1.0
    load = (
        f"1-minute load average {load_start[0]:.1f} before the benchmark started and {load_end[0]:.1f} at the end "
        "(its own threads included) on 2 cores"
        + (
            ": **measured under load** from other jobs on this machine; the figures are lower than an idle "
            "machine gives and the lead engineer may rerun them idle."
            if busy
            else ": nothing else ran."
        )
    )
    return (
        head
        + f"Load: {load}\n\n"
        + f"Threads: vLLM's worker bound to core(s) {os.environ.get('VLLM_CPU_OMP_THREADS_BIND')} "
        "(VLLM_CPU_OMP_THREADS_BIND), as many torch threads for the HF server. On an oversubscribed machine "
        "vLLM's OpenMP threads bound to both cores mostly waited on each other (an attempt ran about 10x "
        "slower); there, measure with `--threads 1`.\n\n"
        + "**vLLM steered vs unsteered, compiled and eager** (64 requests x 64 tokens, 8 steering configs, "
        f"`ignore_eos`, prefix caching off, {len(rounds.times['compiled steered'])} alternating rounds of the four):\n\n"
        + table(
            ["engine", "steered (s)", "unsteered (s)", "steered / unsteered", "steered tokens/s"],
            [
                [
                    mode,
                    fmt_range(*rounds.summary(f"{mode} steered")),
                    fmt_range(*rounds.summary(f"{mode} unsteered")),
                    fmt_range(*(eager_ratio if mode == "eager" else ratio), unit="x"),
                    f"{N_REQUESTS * MAX_TOKENS / rounds.summary(f'{mode} steered')[0]:.1f}",
                ]
                for mode in ("compiled", "eager")
            ],
        )
        + f"\nCompiled steered / compiled unsteered: {fmt_range(*ratio, unit='x')} (goal <= 1.05x). Compiled steered "
        f"serves {fmt_range(*speedup, unit='x')} the eager steered throughput (expected >= 1.15x); unsteered, compiled "
        f"serves {fmt_range(*plain_speedup, unit='x')} eager's, so that is what compiling gives on this machine and "
        "steering keeps it. Engine start: "
        f"compiled {engine_start['compiled']:.0f} s, eager {engine_start['eager']:.0f} s (vLLM's compile cache "
        "was warm or cold as the machine had it; a first start on a fresh machine compiles from scratch).\n\n"
        + "**HTTP, 64 requests sent at once** (greedy, max_tokens 64, each with one of the 8 configs; rows end at EOS):\n\n"
        + table(
            ["server", "wall (s)", "completion tokens", "tokens/s", "requests/s", "p50 latency (s)", "p95 latency (s)"],
            rows,
        )
        + same_tokens(http)
        + f"\n\nvLLM (compiled) serves {vl / hf:.1f}x the HF batcher's tokens/s here. The HF server decodes at most 16 rows per batch and admits new requests between "
        "batches; vLLM admits them at every step (continuous batching) and runs all 64 together.\n\n"
        + "No GPU figure exists for this path: vLLM's CUDA build cannot be brought to the lent GPU machine "
        "(64 MiB per call), so these are CPU (vllm-cpu 0.32.0) figures only.\n"
    )


def same_tokens(http: dict) -> str:
    counts = {r["tokens"] for r in http.values()}
    return (
        "\nBoth servers generated the same number of completion tokens: the steered rows end where the HF "
        "path's do (the tests check the tokens themselves)."
        if len(counts) == 1
        else ""
    )


def _version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
