"""The refusal direction (Arditi et al. 2024), its ablation and addition, and conditional steering (CAST) on
Qwen2.5-Coder-0.5B-Instruct; then the same CAST through `steerlab serve` (docs/results.md sections 4 and 4b).

  python experiments/refusal/run.py measure direction  # difference of means + layer selection on the validation split
  python experiments/refusal/run.py measure generate   # held-out refusal rates: unsteered vs ablated, unsteered vs added
  python experiments/refusal/run.py measure cast       # condition fitted on validation prompts; CAST on the test prompts
  python experiments/refusal/run.py measure server     # section 4's CAST as HTTP requests beside the library
  python experiments/refusal/run.py render             # both sections from results.json and server.json (no model)

Data (../shared/data/refusal, read in place): directions from harmful_train / harmless_train, layer and CAST
threshold from harmful_val / harmless_val, rates on samples of harmful_test (JailbreakBench-style), AdvBench
(goals not in the training split) and harmless_test. Each step saves its full JSON (with the generated texts,
which quote the data sets) under experiments/refusal/out/ (not committed) so a stopped run resumes, then
distils it into results.json beside this script (committed: rates, times and the one example per arm the
section quotes). Greedy decoding, float32, torch pinned to --threads (default 1; the server step's default 2).
"""

from __future__ import annotations

import csv
import json
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import httpx  # noqa: E402
import torch  # noqa: E402
from common import load_study_model, save_json, study_parser, uvicorn_in_thread, write_results_section  # noqa: E402

from steerlab.ablation import DirectionalAblation  # noqa: E402
from steerlab.conditional import ConditionalSteering, fit_condition, last_token_scores  # noqa: E402
from steerlab.evaluation.refusal import is_refusal  # noqa: E402
from steerlab.evaluation.refusal_direction import refusal_direction, select_layer  # noqa: E402
from steerlab.evaluation.tasks import data_root  # noqa: E402
from steerlab.generation import GenerationConfig, encode_prompts, generate  # noqa: E402
from steerlab.server.app import create_app  # noqa: E402
from steerlab.server.registry import VectorRegistry  # noqa: E402
from steerlab.steering import SpecSteering, SteeringSpec  # noqa: E402
from steerlab.vector import SteeringVector  # noqa: E402

OUT = HERE / "out"
RESULTS = HERE / "results.json"
SERVER = HERE / "server.json"
SEED = 0
SETS = ("harmful_test", "harmless_test", "advbench")


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
    return {
        "harmful_test": sample(instructions("harmful_test.json"), n),
        "advbench": sample(advbench(train), n),
        "harmless_test": sample(instructions("harmless_test.json"), n),
    }


def load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def refusal_vector(lm, n_train: int):
    harmful = encode_prompts(lm, sample(instructions("harmful_train.json"), n_train))
    harmless = encode_prompts(lm, sample(instructions("harmless_train.json"), n_train))
    return refusal_direction(lm, harmful, harmless)


def harmful_condition(lm, vector):
    """The same per-layer difference of means, read as cosine at the last prompt token; layer, threshold and
    comparison fitted on the validation split (disjoint from training and test)."""
    steer_val = encode_prompts(lm, instructions("harmful_val.json"))
    keep_val = encode_prompts(lm, sample(instructions("harmless_val.json"), len(steer_val)))
    return fit_condition(lm, vector, steer_val, keep_val)


def fired_share(lm, condition, prompts: list[str]) -> float:
    scores = last_token_scores(lm, encode_prompts(lm, prompts), {condition.layer: condition.direction})
    return float(condition.decide(scores[condition.layer]).float().mean())


# ---- measure ------------------------------------------------------------------------------------------


def step_direction(lm, args) -> None:
    t0 = time.time()
    vector = refusal_vector(lm, args.train)
    t1 = time.time()
    val_h = encode_prompts(lm, sample(instructions("harmful_val.json"), args.val))
    val_n = encode_prompts(lm, sample(instructions("harmless_val.json"), args.val))
    candidates = [k for k in range(0, lm.num_layers, args.layer_step) if k < 0.8 * lm.num_layers]
    choice = select_layer(
        lm,
        vector,
        val_h,
        val_n,
        candidates=candidates,
        progress=lambda d, t: print(f"layer selection {d}/{t}", flush=True),
    )
    vector.meta = vector.meta.with_recommended(layer=choice.layer, multiplier=1.0)
    vector.save(OUT / "refusal_direction.safetensors", overwrite=True)
    save_json(
        OUT / "direction.json",
        {
            "layer": choice.layer,
            "rule": choice.rule,
            "ablated_harmful": choice.ablated_harmful,
            "added_harmless": choice.added_harmless,
            "unsteered_harmful": choice.unsteered_harmful,
            "unsteered_harmless": choice.unsteered_harmless,
            "n_train": args.train,
            "n_val": args.val,
            "norm": float(vector.directions[choice.layer].norm()),
            "seconds": {"direction": t1 - t0, "selection": time.time() - t1},
        },
    )
    print(f"layer {choice.layer} ({choice.rule})")


def rates(results, n: int) -> dict:
    return {
        "steered": sum(is_refusal(r.steered) for r in results) / n,
        "unsteered": sum(is_refusal(r.original) for r in results) / n if results[0].original is not None else None,
        "examples": [{"prompt": r.prompt, "steered": r.steered, "unsteered": r.original} for r in results],
    }


def step_generate(lm, args) -> None:
    vector = SteeringVector.load(OUT / "refusal_direction.safetensors")
    layer = int(vector.meta.recommended.layer)
    config = GenerationConfig(max_new_tokens=args.tokens)
    sets = test_sets(args.n)
    arms = {
        "harmful_test": DirectionalAblation(vector, layer),
        "harmless_test": SpecSteering(SteeringSpec(vector, 1.0, [layer], operator="add")),
        "advbench": DirectionalAblation(vector, layer),
    }
    done = load_json(OUT / "generate.json")
    for name, steer in arms.items():
        if name in done or (name == "advbench" and args.skip_advbench):
            continue
        t0 = time.time()
        results = generate(lm, sets[name], steer, generate_orig_output=True, config=config, batch_size=args.batch)
        done[name] = {
            **rates(results, len(results)),
            "seconds": time.time() - t0,
            "n": len(results),
            "tokens": args.tokens,
            "operator": "ablate (every layer)" if name != "harmless_test" else f"add at layer {layer}",
        }
        save_json(OUT / "generate.json", done)
        print(name, done[name]["unsteered"], "->", done[name]["steered"], f"{done[name]['seconds']:.0f}s", flush=True)


def step_cast(lm, args) -> None:
    vector = SteeringVector.load(OUT / "refusal_direction.safetensors")
    layer = int(vector.meta.recommended.layer)
    t0 = time.time()
    condition = harmful_condition(lm, vector)
    condition.save(OUT / "refusal_condition.safetensors", lm, overwrite=True)
    fitted = time.time() - t0
    cast = ConditionalSteering(SteeringSpec(vector, 1.0, [layer], operator="add"), condition)
    config = GenerationConfig(max_new_tokens=args.tokens)
    sets = test_sets(args.n)
    done = {
        "condition": {
            "layer": condition.layer,
            "threshold": condition.threshold,
            "comparison": condition.comparison,
            **condition.fit,
            "seconds": fitted,
        },
        "behaviour": f"add the refusal direction at layer {layer}, multiplier 1",
    }
    for name in SETS:
        if name == "advbench" and args.skip_advbench:
            continue
        fired = fired_share(lm, condition, sets[name])
        t1 = time.time()
        results = generate(lm, sets[name], cast, config=config, batch_size=args.batch)
        done[name] = {**rates(results, len(results)), "fired": fired, "seconds": time.time() - t1}
        save_json(OUT / "cast.json", done)
        print(name, "fired", done[name]["fired"], "refused", done[name]["steered"], flush=True)


def ask(url: str, prompt: str, item: dict, tokens: int) -> tuple[str, str]:
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "steering": [item],
        "include_original": True,
    }
    reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=600)
    reply.raise_for_status()
    steered, original = reply.json()["choices"]
    return steered["message"]["content"], original["message"]["content"]


def step_server(lm, args) -> None:
    """Refit section 4's direction at its layer (no layer selection rerun) and its condition, serve both from one
    folder, send each held-out prompt as one chat request (8 in flight) and generate the same with the library."""
    section4 = load_json(RESULTS)
    layer, n_train = section4["direction"]["layer"], section4["direction"]["n_train"]
    t0 = time.time()
    vector = refusal_vector(lm, n_train)
    vector.meta = vector.meta.with_recommended(layer=layer, multiplier=1.0)
    condition = harmful_condition(lm, vector)
    fitted = time.time() - t0
    print(
        f"direction norm {float(vector.directions[layer].norm()):.2f}; condition layer {condition.layer} "
        f"cos {condition.comparison} {condition.threshold:.4f} ({fitted:.0f} s)",
        flush=True,
    )
    cast = ConditionalSteering(SteeringSpec(vector, 1.0, [layer], operator="add"), condition)
    item = {"vector": "refusal", "layers": [layer], "multiplier": 1.0, "operator": "add", "condition": "harmful"}
    sets = test_sets(args.n)
    out: dict = {
        "layer": layer,
        "condition": {
            "layer": condition.layer,
            "threshold": condition.threshold,
            "comparison": condition.comparison,
            "f1": condition.fit["f1"],
        },
        "fit_seconds": fitted,
        "threads": args.threads,
        "tokens": args.tokens,
        "load_average_start": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory() as folder:
        vector.save(Path(folder) / "refusal.safetensors")
        condition.save(Path(folder) / "harmful.safetensors", lm)
        url, server, thread = uvicorn_in_thread(create_app(lm, VectorRegistry.from_dir(lm, folder), max_batch=16))
        try:
            for name in SETS[:2]:
                prompts = sets[name]
                fired = fired_share(lm, condition, prompts)
                t1 = time.time()
                with ThreadPoolExecutor(8) as pool:
                    served = list(pool.map(lambda p: ask(url, p, item, args.tokens), prompts))
                t2 = time.time()
                library = generate(lm, prompts, cast, config=GenerationConfig(max_new_tokens=args.tokens), batch_size=8)
                t3 = time.time()
                out[name] = {
                    "n": len(prompts),
                    "fired": fired,
                    "server_unsteered": sum(is_refusal(o) for _, o in served) / len(prompts),
                    "server_cast": sum(is_refusal(s) for s, _ in served) / len(prompts),
                    "library_cast": sum(is_refusal(r.steered) for r in library) / len(prompts),
                    "same_text": sum(s == lib.steered for (s, _), lib in zip(served, library, strict=False)),
                    "server_seconds": t2 - t1,
                    "library_seconds": t3 - t2,
                    "section4_cast": section4["cast"][name]["steered"],
                    "section4_unsteered": section4["generate"][name]["unsteered"],
                }
                print(name, out[name], flush=True)
        finally:
            server.should_exit = True
            thread.join(60)
    out["load_average_end"] = os.getloadavg()[0]
    save_json(SERVER, out)


def flipped_example(arm: dict, refused_before: bool) -> dict | None:
    """The first prompt whose refusal the steering flipped (refusal -> answer, or answer -> refusal), clipped."""
    clip = lambda t: " ".join((t or "").split())[:110]  # noqa: E731
    for ex in arm.get("examples", []):
        if is_refusal(ex["unsteered"] or "") == refused_before and is_refusal(ex["steered"]) != refused_before:
            return {key: clip(ex[key]) for key in ("prompt", "unsteered", "steered")}
    return None


def distil(args) -> None:
    """results.json from out/: the measurements without the generated texts, but the example the section quotes."""
    strip = lambda arm: {k: v for k, v in arm.items() if k != "examples"} if isinstance(arm, dict) else arm  # noqa: E731
    generate, cast = load_json(OUT / "generate.json"), load_json(OUT / "cast.json")
    for key, before in (("harmful_test", True), ("harmless_test", False)):
        if key in generate:
            generate[key]["example"] = flipped_example(generate[key], before)
    save_json(
        RESULTS,
        {
            "settings": {"n": args.n, "tokens": args.tokens},
            "direction": load_json(OUT / "direction.json"),
            "generate": {k: strip(v) for k, v in generate.items()},
            "cast": {k: strip(v) for k, v in cast.items()},
        },
    )


# ---- render -------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def direction_lines(d: dict) -> list[str]:
    return [
        f"**Direction and layer.** Difference of means at the last prompt token between {d['n_train']} harmful "
        f"and {d['n_train']} harmless training instructions, at every layer. The layer was chosen by "
        f"`select_layer` on {d['n_val']} + {d['n_val']} validation instructions (every 2nd layer of the "
        f"first 80%), reading the log-odds that the answer's first token starts a refusal phrase: "
        f"**layer {d['layer']}** ({d['rule']}). Direction norm {d['norm']:.1f}.",
        "",
        "| layer | " + " | ".join(d["ablated_harmful"]) + " |",
        "|---|" + "---|" * len(d["ablated_harmful"]),
        "| harmful, ablated (log-odds) | " + " | ".join(f"{v:.2f}" for v in d["ablated_harmful"].values()) + " |",
        "| harmless, added (log-odds) | " + " | ".join(f"{v:.2f}" for v in d["added_harmless"].values()) + " |",
        "",
        f"Unsteered log-odds: harmful {d['unsteered_harmful']:.2f}, harmless {d['unsteered_harmless']:.2f}. "
        f"Time: direction {d['seconds']['direction']:.0f} s, selection {d['seconds']['selection']:.0f} s.",
        "",
    ]


def generate_lines(g: dict, layer: object) -> list[str]:
    lines = [
        "**Held-out refusal rates** (ablation = `DirectionalAblation`, the direction removed from the "
        "residual stream at every layer, equal to the orthogonalised export; addition = the direction "
        f"added at layer {layer} with multiplier 1 at every position):",
        "",
        "| set | steering | refusal unsteered | refusal steered | anchor (Arditi et al. 2024, Qwen-1.8B-chat) |",
        "|---|---|---|---|---|",
    ]
    anchors = {
        "harmful_test": "compliance 0.30 -> 0.99 on JailbreakBench (substring judge), i.e. refusal about 0.70 -> 0.01",
        "advbench": "",
        "harmless_test": "adding: 98% of harmless prompts refuse",
    }
    names = {
        "harmful_test": "harmful_test (JailbreakBench-style)",
        "advbench": "AdvBench (not in training)",
        "harmless_test": "harmless_test (Alpaca)",
    }
    for key in ("harmful_test", "advbench", "harmless_test"):
        if key in g:
            arm = g[key]
            lines.append(
                f"| {names[key]} | {arm['operator']} | {_pct(arm['unsteered'])} | {_pct(arm['steered'])} | "
                f"{anchors[key]} |"
            )
    lines.append("")
    for key in ("harmful_test", "harmless_test"):
        ex = g.get(key, {}).get("example")
        if ex:
            lines.append(f'- {key}: "{ex["prompt"]}" -> unsteered: "{ex["unsteered"]}" / steered: "{ex["steered"]}"')
    return [
        *lines,
        "",
        "Time: " + ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in g.items()) + " (steered and "
        "original rows in one batch).",
        "",
    ]


def cast_lines(c: dict, g: dict) -> list[str]:
    cond = c["condition"]
    per_layer = ", ".join(
        f"{k}: {v['f1']:.2f}" for k, v in sorted(cond["per_layer"].items(), key=lambda kv: int(kv[0]))
    )
    lines = [
        f"**CAST.** Condition fitted by `fit_condition` on {cond['n_steer']} harmful + {cond['n_keep']} harmless "
        f"validation instructions (cosine of the last-prompt-token activation with the per-layer difference "
        f"of means; grid over layer, threshold and comparison, best F1): layer {cond['layer']}, cos "
        f"{cond['comparison']} {cond['threshold']:.4f}, F1 {cond['f1']:.3f}, accuracy {cond['accuracy']:.3f} (on the "
        f"validation prompts it was fitted on; the test sets' firing rates are below). "
        f"Best F1 per layer: {per_layer}. Behaviour: {c['behaviour']}.",
        "",
        "| set | condition fired | refusal unsteered | refusal with CAST | anchor (Lee et al. 2024, 8B) |",
        "|---|---|---|---|---|",
    ]
    for key, anchor in (("harmful_test", "83% refusal"), ("advbench", ""), ("harmless_test", "2.4% refusal")):
        if key in c:
            lines.append(
                f"| {key} | {_pct(c[key]['fired'])} | {_pct(g.get(key, {}).get('unsteered'))} | "
                f"{_pct(c[key]['steered'])} | {anchor} |"
            )
    return [
        *lines,
        "",
        "Time: fit "
        + f"{cond['seconds']:.0f} s, "
        + ", ".join(f"{k} {c[k]['seconds']:.0f} s" for k in ("harmful_test", "harmless_test", "advbench") if k in c)
        + ".",
        "",
    ]


def section(results: dict) -> str:
    d, g, c, s = results["direction"], results["generate"], results["cast"], results["settings"]
    lines = [
        "## 4. The refusal direction, its ablation and CAST on Qwen2.5-Coder-0.5B-Instruct",
        "",
        f"Model: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF dequantised to float32), chosen over 1.5B because "
        f"1.5B is about 3x slower on this shared 2-core CPU and the whole run had to fit in one session. "
        f"Greedy decoding, {s['tokens']} new tokens, {s['n']} held-out prompts per set (seeded sample), one torch "
        "thread. Refusal = the refusal-phrase scorer (`evaluation/refusal.py`, Arditi et al.'s substrings).",
        "",
    ]
    lines += direction_lines(d) if d else []
    lines += generate_lines(g, d.get("layer", "?")) if g else []
    lines += cast_lines(c, g) if c else []
    lines += [
        "Commands: `python experiments/refusal/run.py measure direction`, `... measure generate`, `... measure "
        "cast`, then `python experiments/refusal/run.py render` (defaults: --train 96 --val 16 --layer-step 2 "
        "--n 32 --tokens 24 --batch 8 --threads 1). Numbers and the quoted examples: "
        "experiments/refusal/results.json; all texts: experiments/refusal/out/*.json (not committed)."
    ]
    return "\n".join(lines)


def server_section(out: dict) -> str:
    c = out["condition"]
    lines = [
        "### 4b. The same CAST through `steerlab serve`",
        "",
        f"The refusal direction refitted at layer {out['layer']} and the condition refitted on the validation split "
        f"(layer {c['layer']}, cos {c['comparison']} {c['threshold']:.4f}, F1 {c['f1']:.3f}), served from one folder; "
        f'each held-out prompt one chat request with `{{"vector": "refusal", "layers": [{out["layer"]}], '
        '"multiplier": 1, "condition": "harmful"}` and `include_original`, 8 requests in flight (the server '
        f"batches them); the library's `ConditionalSteering` on the same prompts beside it. {out['tokens']} greedy "
        f"tokens, {out['threads']} torch threads, load average {out['load_average_start']:.1f} at the start.",
        "",
        "| set | condition fired | refusal unsteered (server) | CAST, server | CAST, library (this run) | "
        "CAST, section 4 | same text, server vs library |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in SETS[:2]:
        r = out[name]
        lines.append(
            f"| {name} | {_pct(r['fired'])} | {_pct(r['server_unsteered'])} | {_pct(r['server_cast'])} | "
            f"{_pct(r['library_cast'])} | {_pct(r['section4_cast'])} | {r['same_text']}/{r['n']} |"
        )
    return "\n".join(
        [
            *lines,
            "",
            "Time: fit "
            + f"{out['fit_seconds']:.0f} s; "
            + "; ".join(
                f"{name} server {out[name]['server_seconds']:.0f} s (steered and original), library "
                f"{out[name]['library_seconds']:.0f} s (steered only)"
                for name in SETS[:2]
            )
            + ".",
            "",
            "Command: `python experiments/refusal/run.py measure server --threads 2` (rates and agreement: "
            "experiments/refusal/server.json).",
        ]
    )


def render(doc: Path) -> None:
    write_results_section("refusal", section(load_json(RESULTS)), doc)
    write_results_section("refusal_server", server_section(load_json(SERVER)), doc)


def main(argv: list[str] | None = None) -> None:
    parser = study_parser(__doc__.splitlines()[0], ["direction", "generate", "cast", "server"])
    parser.add_argument("--train", type=int, default=96, help="harmful and harmless training instructions each")
    parser.add_argument("--val", type=int, default=16, help="validation instructions each (layer and threshold)")
    parser.add_argument("--layer-step", type=int, default=2, help="candidate layers: every k-th of the first 80%%")
    parser.add_argument("--n", type=int, default=32, help="held-out instructions per set")
    parser.add_argument("--tokens", type=int, default=24, help="new tokens per answer (greedy)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--skip-advbench", action="store_true")
    args = parser.parse_args(argv)
    if args.action == "measure":
        if args.step is None:
            parser.error("measure needs a step: direction, generate, cast or server")
        torch.set_num_threads(args.threads)
        OUT.mkdir(parents=True, exist_ok=True)
        steps = {"direction": step_direction, "generate": step_generate, "cast": step_cast, "server": step_server}
        steps[args.step](load_study_model("qwen"), args)
        if args.step != "server":
            distil(args)
    render(args.doc)


if __name__ == "__main__":
    main()
