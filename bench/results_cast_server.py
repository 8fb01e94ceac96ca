"""CAST through `steerlab serve`: the refusal condition and behaviour of docs/results.md section 4, sent as HTTP
requests to a real server on loopback, beside the library's own ConditionalSteering on the same prompts.

  python bench/results_cast_server.py [--n 32] [--tokens 24] [--threads 2]

Refits what section 4 fitted (same seeded samples of ../shared/data/refusal, read in place): the difference of
means at the last prompt token at section 4's layer (no layer selection rerun), and the condition by
`fit_condition` on the validation split; both go in a folder the server reads. Each held-out prompt is one chat
request with `{"vector": "refusal", "layers": [L], "multiplier": 1, "condition": "harmful"}` and
`include_original`, 8 requests in flight; the library generates the same prompts with the same steer. Writes its
section of docs/results.md and bench/results/refusal_server.json (rates and agreement, no texts).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from common import uvicorn_in_thread, write_section  # noqa: E402
from results_ab import qwen_path  # noqa: E402
from results_refusal import instructions, sample, test_sets  # noqa: E402
from steerlab.conditional import ConditionalSteering, fit_condition, last_token_scores  # noqa: E402
from steerlab.evaluation.refusal import is_refusal  # noqa: E402
from steerlab.evaluation.refusal_direction import refusal_direction  # noqa: E402
from steerlab.generation import GenerationConfig, encode_prompts, generate  # noqa: E402
from steerlab.models import load_model  # noqa: E402
from steerlab.server.app import create_app  # noqa: E402
from steerlab.server.registry import VectorRegistry  # noqa: E402
from steerlab.steering import SteeringSpec  # noqa: E402
from steerlab.vector import write_atomic  # noqa: E402

SECTION4 = json.loads((ROOT / "bench" / "results" / "refusal.json").read_text(encoding="utf-8"))
SETS = ("harmful_test", "harmless_test")


def ask(url: str, prompt: str, item: dict, tokens: int) -> tuple[str, str, dict]:
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": tokens, "temperature": 0,
            "steering": [item], "include_original": True}
    reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=600)
    reply.raise_for_status()
    steered, original = reply.json()["choices"]
    return steered["message"]["content"], original["message"]["content"], reply.json()["steering"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(qwen_path())
    layer, n_train = SECTION4["direction"]["layer"], SECTION4["direction"]["n_train"]
    t0 = time.time()
    harmful = encode_prompts(lm, sample(instructions("harmful_train.json"), n_train))
    harmless = encode_prompts(lm, sample(instructions("harmless_train.json"), n_train))
    vector = refusal_direction(lm, harmful, harmless)
    vector.meta = vector.meta.with_recommended(layer=layer, multiplier=1.0)
    steer_val = encode_prompts(lm, instructions("harmful_val.json"))
    condition = fit_condition(lm, vector, steer_val, encode_prompts(lm, sample(instructions("harmless_val.json"),
                                                                               len(steer_val))))
    fitted = time.time() - t0
    print(f"direction norm {float(vector.directions[layer].norm()):.2f}; condition layer {condition.layer} "
          f"cos {condition.comparison} {condition.threshold:.4f} ({fitted:.0f} s)", flush=True)
    config = GenerationConfig(max_new_tokens=args.tokens)
    cast = ConditionalSteering(SteeringSpec(vector, 1.0, [layer], operator="add"), condition)
    item = {"vector": "refusal", "layers": [layer], "multiplier": 1.0, "operator": "add", "condition": "harmful"}
    sets = test_sets(args.n)
    out: dict = {"layer": layer, "condition": {"layer": condition.layer, "threshold": condition.threshold,
                                               "comparison": condition.comparison, "f1": condition.fit["f1"]},
                 "fit_seconds": fitted, "threads": args.threads, "load_average_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as folder:
        vector.save(Path(folder) / "refusal.safetensors")
        condition.save(Path(folder) / "harmful.safetensors", lm)
        app = create_app(lm, VectorRegistry.from_dir(lm, folder), max_batch=16)
        url, server, thread = uvicorn_in_thread(app)
        try:
            for name in SETS:
                prompts = sets[name]
                fired = condition.decide(last_token_scores(lm, encode_prompts(lm, prompts),
                                                           {condition.layer: condition.direction})[condition.layer])
                t1 = time.time()
                with ThreadPoolExecutor(8) as pool:
                    served = list(pool.map(lambda p: ask(url, p, item, args.tokens), prompts))
                t2 = time.time()
                library = generate(lm, prompts, cast, config=config, batch_size=8)
                t3 = time.time()
                same = sum(s == lib.steered for (s, _, _), lib in zip(served, library))
                out[name] = {"n": len(prompts), "fired": float(fired.float().mean()),
                             "server_unsteered": sum(is_refusal(o) for _, o, _ in served) / len(prompts),
                             "server_cast": sum(is_refusal(s) for s, _, _ in served) / len(prompts),
                             "library_cast": sum(is_refusal(r.steered) for r in library) / len(prompts),
                             "same_text": same, "server_seconds": t2 - t1, "library_seconds": t3 - t2,
                             "section4_cast": SECTION4["cast"][name]["steered"],
                             "section4_unsteered": SECTION4["generate"][name]["unsteered"]}
                print(name, {k: v for k, v in out[name].items()}, flush=True)
        finally:
            server.should_exit = True
            thread.join(60)
    out["load_average_end"] = os.getloadavg()[0]
    write_atomic(ROOT / "bench" / "results" / "refusal_server.json", json.dumps(out, indent=1).encode(), overwrite=True)
    write_section("results_cast_server", section(out, args), doc=ROOT / "docs" / "results.md")


def section(out: dict, args) -> str:
    pct = lambda x: f"{100 * x:.0f}%"  # noqa: E731
    c = out["condition"]
    lines = ["### 4b. The same CAST through `steerlab serve`", "",
             f"The refusal direction refitted at layer {out['layer']} and the condition refitted on the validation split "
             f"(layer {c['layer']}, cos {c['comparison']} {c['threshold']:.4f}, F1 {c['f1']:.3f}), served from one folder; "
             f"each held-out prompt one chat request with `{{\"vector\": \"refusal\", \"layers\": [{out['layer']}], "
             "\"multiplier\": 1, \"condition\": \"harmful\"}` and `include_original`, 8 requests in flight (the server "
             f"batches them); the library's `ConditionalSteering` on the same prompts beside it. {args.tokens} greedy "
             f"tokens, {args.threads} torch threads, load average {out['load_average_start']:.1f} at the start.", "",
             "| set | condition fired | refusal unsteered (server) | CAST, server | CAST, library (this run) | "
             "CAST, section 4 | same text, server vs library |",
             "|---|---|---|---|---|---|---|"]
    for name in SETS:
        r = out[name]
        lines.append(f"| {name} | {pct(r['fired'])} | {pct(r['server_unsteered'])} | {pct(r['server_cast'])} | "
                     f"{pct(r['library_cast'])} | {pct(r['section4_cast'])} | {r['same_text']}/{r['n']} |")
    lines += ["", "Time: fit " + f"{out['fit_seconds']:.0f} s; " + "; ".join(
        f"{name} server {out[name]['server_seconds']:.0f} s (steered and original), library "
        f"{out[name]['library_seconds']:.0f} s (steered only)" for name in SETS) + ".",
        "", "Command: `python bench/results_cast_server.py` (rates and agreement: bench/results/refusal_server.json)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
