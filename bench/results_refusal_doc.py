"""Render docs/results.md section 4 (the refusal direction and CAST on Qwen2.5-Coder-0.5B) from bench/out JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from common import write_section  # noqa: E402
from steerlab.evaluation.refusal import is_refusal  # noqa: E402
from steerlab.vector import write_atomic  # noqa: E402



def _load(out: Path, name: str) -> dict:
    path = out / name
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _example(arm: dict, refused_before: bool) -> str:
    """The first prompt whose refusal the steering flipped (refusal -> answer, or answer -> refusal)."""
    for ex in arm.get("examples", []):
        if is_refusal(ex["unsteered"] or "") == refused_before and is_refusal(ex["steered"]) != refused_before:
            clip = lambda t: " ".join((t or "").split())[:110]  # noqa: E731
            return f"\"{clip(ex['prompt'])}\" -> unsteered: \"{clip(ex['unsteered'])}\" / steered: \"{clip(ex['steered'])}\""
    return ""


def section(out: Path, args) -> str:
    d, g, c = _load(out, "direction.json"), _load(out, "generate.json"), _load(out, "cast.json")
    n = args.n
    lines = ["## 4. The refusal direction, its ablation and CAST on Qwen2.5-Coder-0.5B-Instruct", ""]
    lines += [f"Model: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF dequantised to float32), chosen over 1.5B because "
              f"1.5B is about 3x slower on this shared 2-core CPU and the whole run had to fit in one session. "
              f"Greedy decoding, {args.tokens} new tokens, {n} held-out prompts per set (seeded sample), one torch "
              "thread. Refusal = the refusal-phrase scorer (`evaluation/refusal.py`, Arditi et al.'s substrings).", ""]
    if d:
        lines += [f"**Direction and layer.** Difference of means at the last prompt token between {d['n_train']} harmful "
                  f"and {d['n_train']} harmless training instructions, at every layer. The layer was chosen by "
                  f"`select_layer` on {d['n_val']} + {d['n_val']} validation instructions (every 2nd layer of the "
                  f"first 80%), reading the log-odds that the answer's first token starts a refusal phrase: "
                  f"**layer {d['layer']}** ({d['rule']}). Direction norm {d['norm']:.1f}.", "",
                  "| layer | " + " | ".join(d["ablated_harmful"]) + " |",
                  "|---|" + "---|" * len(d["ablated_harmful"]),
                  "| harmful, ablated (log-odds) | " + " | ".join(f"{v:.2f}" for v in d["ablated_harmful"].values()) + " |",
                  "| harmless, added (log-odds) | " + " | ".join(f"{v:.2f}" for v in d["added_harmless"].values()) + " |",
                  "",
                  f"Unsteered log-odds: harmful {d['unsteered_harmful']:.2f}, harmless {d['unsteered_harmless']:.2f}. "
                  f"Time: direction {d['seconds']['direction']:.0f} s, selection {d['seconds']['selection']:.0f} s.", ""]
    if g:
        lines += ["**Held-out refusal rates** (ablation = `DirectionalAblation`, the direction removed from the "
                  "residual stream at every layer, equal to the orthogonalised export; addition = the direction "
                  f"added at layer {d.get('layer', '?')} with multiplier 1 at every position):", "",
                  "| set | steering | refusal unsteered | refusal steered | anchor (Arditi et al. 2024, Qwen-1.8B-chat) |",
                  "|---|---|---|---|---|"]
        anchors = {"harmful_test": "compliance 0.30 -> 0.99 on JailbreakBench (substring judge), i.e. refusal about 0.70 -> 0.01",
                   "advbench": "", "harmless_test": "adding: 98% of harmless prompts refuse"}
        names = {"harmful_test": "harmful_test (JailbreakBench-style)", "advbench": "AdvBench (not in training)",
                 "harmless_test": "harmless_test (Alpaca)"}
        for key in ("harmful_test", "advbench", "harmless_test"):
            if key in g:
                arm = g[key]
                lines.append(f"| {names[key]} | {arm['operator']} | {_pct(arm['unsteered'])} | {_pct(arm['steered'])} | "
                             f"{anchors[key]} |")
        lines.append("")
        for key, before in (("harmful_test", True), ("harmless_test", False)):
            if key in g and _example(g[key], before):
                lines.append(f"- {key}: {_example(g[key], before)}")
        lines += ["", "Time: " + ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in g.items()) + " (steered and original "
                  "rows in one batch).", ""]
    if c:
        cond = c["condition"]
        per_layer = ", ".join(f"{k}: {v['f1']:.2f}" for k, v in sorted(cond["per_layer"].items(), key=lambda kv: int(kv[0])))
        lines += [f"**CAST.** Condition fitted by `fit_condition` on {cond['n_steer']} harmful + {cond['n_keep']} harmless "
                  f"validation instructions (cosine of the last-prompt-token activation with the per-layer difference "
                  f"of means; grid over layer, threshold and comparison, best F1): layer {cond['layer']}, cos "
                  f"{cond['comparison']} {cond['threshold']:.4f}, F1 {cond['f1']:.3f}, accuracy {cond['accuracy']:.3f} (on the "
                  f"validation prompts it was fitted on; the test sets' firing rates are below). "
                  f"Best F1 per layer: {per_layer}. Behaviour: {c['behaviour']}.", "",
                  "| set | condition fired | refusal unsteered | refusal with CAST | anchor (Lee et al. 2024, 8B) |",
                  "|---|---|---|---|---|"]
        for key, anchor in (("harmful_test", "83% refusal"), ("advbench", ""), ("harmless_test", "2.4% refusal")):
            if key in c:
                lines.append(f"| {key} | {_pct(c[key]['fired'])} | {_pct(g.get(key, {}).get('unsteered'))} | "
                             f"{_pct(c[key]['steered'])} | {anchor} |")
        lines += ["", "Time: fit " + f"{cond['seconds']:.0f} s, " + ", ".join(
            f"{k} {c[k]['seconds']:.0f} s" for k in ("harmful_test", "harmless_test", "advbench") if k in c) + ".", ""]
    lines += ["Commands: `python bench/results_refusal.py direction`, `... generate`, `... cast`, then "
              "`python bench/results_refusal.py write` (defaults: --train 96 --val 16 --layer-step 2 --n 32 --tokens 24 "
              "--batch 8 --threads 1). Numbers without the texts: bench/results/refusal.json; the texts: "
              "bench/out/results_refusal/*.json (not committed)."]
    return "\n".join(lines)


def summary(out: Path) -> dict:
    """The saved measurements without the generated texts (they quote the data sets)."""
    strip = lambda arm: {k: v for k, v in arm.items() if k != "examples"} if isinstance(arm, dict) else arm  # noqa: E731
    return {name: {k: strip(v) for k, v in _load(out, f"{name}.json").items()} if name != "direction"
            else _load(out, "direction.json") for name in ("direction", "generate", "cast")}


def write(out: Path, path: Path, args) -> None:
    write_atomic(ROOT / "bench" / "results" / "refusal.json", json.dumps(summary(out), indent=1).encode(), overwrite=True)
    write_section("results_refusal", section(out, args), doc=path)
