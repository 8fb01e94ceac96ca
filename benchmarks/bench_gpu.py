"""GPU benchmarks on random-initialised Llama-architecture models of real shapes in bf16: (1) CAA extraction,
steerlab vs steering-vectors, the per-example loop and the truncated-forward limit on the same sycophancy
pairs, and (2) steered vs unsteered greedy generation tokens/s at batch 1 and 8.

The weights are random (timing does not depend on them); the tokenizer is SmolLM2's. Run it where the GPU
is, with the tokenizer folder and the pairs file beside it, then render its JSON into docs/benchmarks.md:

    python benchmarks/bench_gpu.py measure --tokenizer DIR --pairs generate_dataset.json --json gpu.json
    python benchmarks/bench_gpu.py render gpu.json
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import extraction_contenders as ec
from common import alternate, fmt_range, save_result, table, write_section

STEERLAB, SV, LOOP, LIMIT = "steerlab", "steering-vectors", "per-example loop", "truncated forward (limit)"
# Public shapes. SmolLM2's tokenizer has 49,152 ids, so a shape with a smaller vocabulary gets 49,152 rows.
SHAPES = {
    "llama-3.2-1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
        "rope_theta": 500000.0,
    },
    "llama-2-7b": {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 49152,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 49152,
    },
}


def random_model(shape: str, tokenizer_dir: str, device: str, dtype):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from steerlab.models import LoadedModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **SHAPES[shape],
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return LoadedModel(model, tokenizer, name=f"random {shape}")


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def extraction(lm, data, layers: list[int], batch_size: int, rounds: int) -> dict:
    texts = ec.pair_texts(lm, data)
    vectors: dict[str, dict] = {}

    def keep(name, fn):
        def run():
            vectors[name] = fn()
            sync()

        return run

    contenders = {
        STEERLAB: keep(STEERLAB, lambda: ec.steerlab_fit(lm, data, layers, batch_size)),
        SV: keep(SV, lambda: ec.steering_vectors_fit(lm, texts, layers, batch_size)),
        LOOP: keep(LOOP, lambda: ec.per_example_fit(lm, data, layers)),
        LIMIT: lambda: ec.truncated_forward(lm, data, max(layers), batch_size),
    }
    print(f"[gpu extraction] {lm.name}: {len(data)} pairs, {len(layers)} layer(s), batch {batch_size}", flush=True)
    result = alternate(contenders, rounds)  # warm up on the full workload: CUDA tunes per shape
    inner = [layer for layer in layers if layer != lm.num_layers - 1]  # HF's last hidden state is post-norm
    return {
        "layers": layers,
        "times": result.times,
        "ratios": {name: result.ratios(name, STEERLAB) for name in result.times},
        "vs_limit": result.ratios(STEERLAB, LIMIT),
        "summary": {n: result.summary(n) for n in result.times},
        "cos_sv": min(ec.cosine(vectors[STEERLAB][i], vectors[SV][i]) for i in layers),
        "cos_loop": min(ec.cosine(vectors[STEERLAB][i], vectors[LOOP][i]) for i in inner),
    }


def generation(lm, data, layer: int, new_tokens: int, batches: list[int], rounds: int) -> dict:
    from steerlab.generation import GenerationConfig, generate
    from steerlab.methods.caa import CAAConfig, fit
    from steerlab.steering import SteeringSpec

    vector = fit(lm, data.subset(range(min(16, len(data)))), CAAConfig(layers=[layer]))
    spec = SteeringSpec(vector, multiplier=1.0, layers=[layer])
    prompts = [p.prompt for p in data.pairs[: max(batches)]]

    def run(chunk, batch, steering, tokens):
        lm.model.generation_config.min_new_tokens = tokens  # every row makes exactly `tokens` tokens
        generate(lm, chunk, steering, config=GenerationConfig(max_new_tokens=tokens), batch_size=batch)
        sync()

    out = {}
    for batch in batches:
        chunk = prompts[:batch]
        print(f"[gpu generation] {lm.name}: batch {batch}, {new_tokens} tokens", flush=True)
        result = alternate(
            {
                "unsteered": functools.partial(run, chunk, batch, None, new_tokens),
                "steered": functools.partial(run, chunk, batch, spec, new_tokens),
            },
            rounds,
        )
        out[str(batch)] = {
            "times": result.times,
            "ratio": result.ratios("steered", "unsteered"),
            "tokens_per_s": {n: batch * new_tokens / result.summary(n)[0] for n in result.times},
        }
    return out


def measure(args) -> None:
    import torch

    from steerlab.data import ContrastiveDataset, load_pairs

    dtype = getattr(torch, args.dtype)
    pairs = load_pairs(args.pairs).pairs[: args.pairs_n]
    data = ContrastiveDataset(pairs, f"caa sycophancy generate, first {len(pairs)}", "")
    report = {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "torch": torch.__version__,
        "dtype": args.dtype,
        "pairs": len(pairs),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "new_tokens": args.new_tokens,
        "models": {},
    }
    from importlib import metadata

    import transformers

    report["transformers"] = transformers.__version__
    report["steering-vectors"] = metadata.version("steering-vectors")  # fails early if the peer is missing
    started = time.perf_counter()
    for shape in args.shapes.split(","):
        lm = random_model(shape, args.tokenizer, args.device, dtype)
        middle = lm.num_layers // 2
        entry = {
            "layers": lm.num_layers,
            "hidden": lm.hidden_size,
            "params_b": sum(p.numel() for p in lm.model.parameters()) / 1e9,
            "prompt_tokens": sum(len(ec.tokenize_pair(lm, p)[0]) + 1 for p in data.pairs),
        }
        report["models"][shape] = entry
        layer_sets = (
            {"middle": [middle]}
            if shape in args.middle_only.split(",")
            else {"middle": [middle], "all": list(range(lm.num_layers))}
        )
        for name, layers in layer_sets.items():
            entry[f"extraction_{name}"] = extraction(lm, data, layers, args.batch_size, args.rounds)
            Path(args.json).write_text(json.dumps(report, indent=1))
        entry["generation"] = generation(lm, data, middle, args.new_tokens, [1, 8], args.rounds)
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"[gpu] {shape} done at {time.perf_counter() - started:.0f} s", flush=True)
        del lm
        torch.cuda.empty_cache() if torch.cuda.is_available() else None


def profile(args) -> None:
    """Where the time goes for steerlab and the truncated forward: wall time vs the GPU's busy time."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from steerlab.data import ContrastiveDataset, load_pairs

    lm = random_model(args.shapes.split(",")[0], args.tokenizer, args.device, getattr(torch, args.dtype))
    data = ContrastiveDataset(load_pairs(args.pairs).pairs[: args.pairs_n], "sycophancy", "")
    layers = [lm.num_layers // 2]
    started = time.perf_counter()
    for pair in data.pairs:
        ec.tokenize_pair(lm, pair)
    lines = [f"{lm.name}: tokenizing {len(data)} pairs takes {time.perf_counter() - started:.3f} s on the CPU"]
    runs = {
        STEERLAB: lambda: ec.steerlab_fit(lm, data, layers, args.batch_size),
        LIMIT: lambda: ec.truncated_forward(lm, data, layers[0], args.batch_size),
    }
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    for name, run in runs.items():
        run()
        sync()
        with torch_profile(activities=activities) as prof:
            started = time.perf_counter()
            run()
            sync()
            wall = time.perf_counter() - started
        events = prof.key_averages()
        busy = sum(e.self_device_time_total for e in events) / 1e6
        lines.append(f"{name}: wall {wall:.3f} s under the profiler, GPU kernels {busy:.3f} s")
        lines.append(events.table(sort_by="self_cpu_time_total", row_limit=12))
    Path(args.json).write_text("\n".join(lines))
    print("\n".join(lines))


def render(path: str) -> None:
    report = json.loads(Path(path).read_text())
    save_result("gpu", report)
    body = (
        f"## GPU: random-initialised Llama shapes in {report['dtype']}\n\n"
        f"Command: `python benchmarks/bench_gpu.py measure --shapes {','.join(report['models'])}` on one "
        f"{report['gpu']} (torch {report['torch']}, transformers {report['transformers']}, steering-vectors "
        f"{report['steering-vectors']}), then `python benchmarks/bench_gpu.py render`. Random weights of public "
        "shapes (timing does not depend on the values), SmolLM2's tokenizer, the first "
        f"{report['pairs']} sycophancy A/B pairs read at the answer letter, batch {report['batch_size']} pairs; "
        f"median over {report['rounds']} alternated rounds after a warm-up (min-max). repeng was not run on "
        "the GPU machine (it needs numpy < 2 in its own environment).\n\n"
    )
    for shape, entry in report["models"].items():
        body += (
            f"### {shape} shape ({entry['params_b']:.2f} B parameters, {entry['layers']} layers, hidden "
            f"{entry['hidden']}; {entry['prompt_tokens']} prompt tokens in all)\n\n"
        )
        for key in ("extraction_middle", "extraction_all"):
            if key not in entry:
                continue
            res = entry[key]
            which = f"layer {res['layers'][0]}" if len(res["layers"]) == 1 else f"all {len(res['layers'])} layers"
            rows = [
                [
                    name,
                    fmt_range(*res["summary"][name], digits=3, unit=" s"),
                    f"{report['pairs'] / res['summary'][name][0]:.0f}",
                    fmt_range(*res["ratios"][name]),
                ]
                for name in res["summary"]
            ]
            body += f"Extraction, {which}:\n\n" + table(
                ["contender", "time", "pairs/s", "time / steerlab's (per round)"], rows
            )
            body += (
                f"\nsteerlab / truncated forward: {fmt_range(*res['vs_limit'], digits=3)}; cosine(steerlab, "
                f"steering-vectors) min {res['cos_sv']:.5f}; cosine(steerlab, per-example loop) min "
                f"{res['cos_loop']:.5f} ({report['dtype']} activations).\n\n"
            )
        rows = [
            [
                batch,
                f"{g['tokens_per_s']['unsteered']:.0f}",
                f"{g['tokens_per_s']['steered']:.0f}",
                fmt_range(*g["ratio"], digits=3),
            ]
            for batch, g in entry["generation"].items()
        ]
        body += (
            f"Greedy generation, {report['new_tokens']} new tokens per row (forced), CAA vector at the middle "
            "layer, all positions:\n\n"
        )
        body += table(["batch", "tokens/s unsteered", "tokens/s steered", "steered / unsteered time (per round)"], rows)
        body += "\n"
    write_section("gpu", body)
    print(body)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--tokenizer", required=True, help="a tokenizer folder (SmolLM2's)")
    shared.add_argument("--pairs", required=True, help="the CAA sycophancy generate_dataset.json")
    shared.add_argument("--pairs-n", type=int, default=256)
    shared.add_argument("--shapes", default="llama-3.2-1b,llama-2-7b", help="profile uses the first")
    shared.add_argument("--middle-only", default="", help="shapes measured at the middle layer only")
    shared.add_argument("--batch-size", type=int, default=16)
    shared.add_argument("--rounds", type=int, default=3)
    shared.add_argument("--new-tokens", type=int, default=64)
    shared.add_argument("--device", default="cuda")
    shared.add_argument("--dtype", default="bfloat16")
    shared.add_argument("--json", required=True, help="where the measurement (or the profile's text) is written")
    sub.add_parser("measure", parents=[shared], help="time extraction and generation")
    sub.add_parser("profile", parents=[shared], help="wall time vs GPU busy time for steerlab and the limit")
    sub.add_parser("render", help="write docs/benchmarks.md's GPU section").add_argument("json")
    args = parser.parse_args(argv)
    {"measure": measure, "profile": profile, "render": lambda a: render(a.json)}[args.step](args)


if __name__ == "__main__":
    main()
