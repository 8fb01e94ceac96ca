"""Reproduce the refusal direction (Arditi et al. 2024) and conditional steering (CAST) on Qwen2.5-Coder-Instruct.

  python bench/results_refusal.py direction     # difference of means + layer selection on the validation split
  python bench/results_refusal.py generate      # held-out refusal rates: unsteered vs ablated, unsteered vs added
  python bench/results_refusal.py cast          # condition fitted on validation prompts; CAST on the test prompts
  python bench/results_refusal.py write         # render the docs/results.md section from the saved JSON

Data (../shared/data/refusal, read in place): directions from harmful_train / harmless_train, layer and CAST
threshold from harmful_val / harmless_val, rates on samples of harmful_test (JailbreakBench-style), AdvBench
(goals not in the training split) and harmless_test. Each step saves JSON under bench/out/results_refusal/
so a stopped run resumes. Greedy decoding, float32, torch pinned to --threads (default 1).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from results_ab import qwen_path  # noqa: E402
from steerlab.ablation import DirectionalAblation  # noqa: E402
from steerlab.conditional import ConditionalSteering, fit_condition, last_token_scores  # noqa: E402
from steerlab.evaluation.refusal import is_refusal  # noqa: E402
from steerlab.evaluation.refusal_direction import refusal_direction, select_layer  # noqa: E402
from steerlab.evaluation.tasks import data_root  # noqa: E402
from steerlab.generation import GenerationConfig, encode_prompts, generate  # noqa: E402
from steerlab.models import load_model  # noqa: E402
from steerlab.steering import SteeringSpec, VectorSteering  # noqa: E402
from steerlab.vector import SteeringVector  # noqa: E402

OUT = ROOT / "bench" / "out" / "results_refusal"
SEED = 0


def instructions(name: str) -> list[str]:
    return [r["instruction"] for r in json.loads((data_root() / "refusal" / name).read_text(encoding="utf-8"))]


def sample(items: list[str], n: int) -> list[str]:
    items = list(items)
    random.Random(SEED).shuffle(items)
    return items[:n]


def advbench(exclude: set[str]) -> list[str]:
    with (data_root() / "refusal" / "advbench_harmful_behaviors.csv").open(encoding="utf-8", newline="") as f:
        return [row["goal"] for row in csv.DictReader(f) if row["goal"] not in exclude]


def test_sets(n: int) -> dict[str, list[str]]:
    train = set(instructions("harmful_train.json"))
    return {"harmful_test": sample(instructions("harmful_test.json"), n), "advbench": sample(advbench(train), n),
            "harmless_test": sample(instructions("harmless_test.json"), n)}


def save(name: str, data) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / name).write_text(json.dumps(data, indent=1), encoding="utf-8")


def load_json(name: str):
    return json.loads((OUT / name).read_text(encoding="utf-8"))


def step_direction(lm, args) -> None:
    t0 = time.time()
    harmful = encode_prompts(lm, sample(instructions("harmful_train.json"), args.train))
    harmless = encode_prompts(lm, sample(instructions("harmless_train.json"), args.train))
    vector = refusal_direction(lm, harmful, harmless)
    t1 = time.time()
    val_h = encode_prompts(lm, sample(instructions("harmful_val.json"), args.val))
    val_n = encode_prompts(lm, sample(instructions("harmless_val.json"), args.val))
    candidates = [k for k in range(0, lm.num_layers, args.layer_step) if k < 0.8 * lm.num_layers]
    choice = select_layer(lm, vector, val_h, val_n, candidates=candidates,
                          progress=lambda d, t: print(f"layer selection {d}/{t}", flush=True))
    vector.meta = vector.meta.with_recommended(layer=choice.layer, multiplier=1.0)
    vector.save(OUT / "refusal_direction.safetensors", overwrite=True)
    save("direction.json", {"layer": choice.layer, "rule": choice.rule, "ablated_harmful": choice.ablated_harmful,
                            "added_harmless": choice.added_harmless, "unsteered_harmful": choice.unsteered_harmful,
                            "unsteered_harmless": choice.unsteered_harmless, "n_train": args.train, "n_val": args.val,
                            "norm": float(vector.directions[choice.layer].norm()),
                            "seconds": {"direction": t1 - t0, "selection": time.time() - t1}})
    print(f"layer {choice.layer} ({choice.rule})")


def rates(results, n: int) -> dict:
    return {"steered": sum(is_refusal(r.steered) for r in results) / n,
            "unsteered": sum(is_refusal(r.original) for r in results) / n if results[0].original is not None else None,
            "examples": [{"prompt": r.prompt, "steered": r.steered, "unsteered": r.original} for r in results]}


def step_generate(lm, args) -> None:
    vector = SteeringVector.load(OUT / "refusal_direction.safetensors")
    layer = int(vector.meta.recommended.layer)
    config = GenerationConfig(max_new_tokens=args.tokens)
    sets = test_sets(args.n)
    arms = {"harmful_test": DirectionalAblation(vector, layer),
            "harmless_test": VectorSteering(SteeringSpec(vector, 1.0, [layer], operator="add")),
            "advbench": DirectionalAblation(vector, layer)}
    done = load_json("generate.json") if (OUT / "generate.json").exists() else {}
    for name, steer in arms.items():
        if name in done or (name == "advbench" and args.skip_advbench):
            continue
        t0 = time.time()
        results = generate(lm, sets[name], steer, generate_orig_output=True, config=config, batch_size=args.batch)
        done[name] = {**rates(results, len(results)), "seconds": time.time() - t0, "n": len(results),
                      "tokens": args.tokens,
                      "operator": "ablate (every layer)" if name != "harmless_test" else f"add at layer {layer}"}
        save("generate.json", done)
        print(name, done[name]["unsteered"], "->", done[name]["steered"], f"{done[name]['seconds']:.0f}s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["direction", "generate", "cast", "write"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train", type=int, default=96, help="harmful and harmless training instructions each")
    parser.add_argument("--val", type=int, default=16, help="validation instructions each (layer and threshold)")
    parser.add_argument("--layer-step", type=int, default=2, help="candidate layers: every k-th of the first 80%%")
    parser.add_argument("--n", type=int, default=32, help="held-out instructions per set")
    parser.add_argument("--tokens", type=int, default=24, help="new tokens per answer (greedy)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--skip-advbench", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.step == "write":
        from results_refusal_doc import write

        write(OUT, ROOT / "docs" / "results.md", args)
        return
    lm = load_model(qwen_path())
    {"direction": step_direction, "generate": step_generate, "cast": step_cast}[args.step](lm, args)


def step_cast(lm, args) -> None:
    vector = SteeringVector.load(OUT / "refusal_direction.safetensors")
    layer = int(vector.meta.recommended.layer)
    t0 = time.time()
    # The condition: the same per-layer difference of means, read as cosine at the last prompt token; layer,
    # threshold and comparison fitted on the validation split (disjoint from training and test).
    steer_val = encode_prompts(lm, instructions("harmful_val.json"))
    keep_val = encode_prompts(lm, sample(instructions("harmless_val.json"), len(steer_val)))
    condition = fit_condition(lm, vector, steer_val, keep_val)
    condition.save(OUT / "refusal_condition.safetensors", lm, overwrite=True)
    fitted = time.time() - t0
    cast = ConditionalSteering(SteeringSpec(vector, 1.0, [layer], operator="add"), condition)
    config = GenerationConfig(max_new_tokens=args.tokens)
    sets = test_sets(args.n)
    done = {"condition": {"layer": condition.layer, "threshold": condition.threshold,
                          "comparison": condition.comparison, **condition.fit, "seconds": fitted},
            "behaviour": f"add the refusal direction at layer {layer}, multiplier 1"}
    for name in ("harmful_test", "harmless_test", "advbench"):
        if name == "advbench" and args.skip_advbench:
            continue
        ids = encode_prompts(lm, sets[name])
        fired = condition.decide(last_token_scores(lm, ids, {condition.layer: condition.direction})[condition.layer])
        t1 = time.time()
        results = generate(lm, sets[name], cast, config=config, batch_size=args.batch)
        done[name] = {**rates(results, len(results)), "fired": float(fired.float().mean()), "seconds": time.time() - t1}
        save("cast.json", done)
        print(name, "fired", done[name]["fired"], "refused", done[name]["steered"], flush=True)


if __name__ == "__main__":
    main()
