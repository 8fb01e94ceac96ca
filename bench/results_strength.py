"""Strength you can trust (issue 12): sweeps whose recommendations carry intervals, checked on held-out data.

  python bench/results_strength.py sentiment     # SmolLM2: sentiment sweep (val), then up/down cells on test prompts
  python bench/results_strength.py refusal       # SmolLM2: CAA refusal A/B sweep: does it store a default?
  python bench/results_strength.py ab            # Qwen2.5-Coder-0.5B: sycophancy, hallucination, refusal A/B
  python bench/results_strength.py calibrate     # SmolLM2: KL per strength for the sentiment vector's up cell layer
  python bench/results_strength.py write         # the docs/results.md subsection from the saved JSON

Every layer and strength is chosen by `steerlab.evaluation.sweep` on the validation split (no hand tuning);
the test numbers come from other prompts or questions. Sizes are reduced to fit a shared 2-core CPU and are
written into each JSON and the doc. Each step saves JSON under bench/out/results_strength/ when it finishes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from results_ab import load  # noqa: E402
from steerlab.evaluation.ab import Cell, UNSTEERED, at_chance, first_answer, letter_words, score_ab  # noqa: E402
from steerlab.evaluation.calibrate import CalibrationConfig, calibrate  # noqa: E402
from steerlab.evaluation.fluency import distinct_n, repetition_rate  # noqa: E402
from steerlab.evaluation.sentiment import vader_scores  # noqa: E402
from steerlab.evaluation.stats import paired_interval  # noqa: E402
from steerlab.evaluation.sweep import SweepConfig, generate_grid, save_sweep, sweep  # noqa: E402
from steerlab.evaluation.tasks import get_task  # noqa: E402
from steerlab.strength import neutral_texts, strength_of  # noqa: E402
from steerlab.vector import SteeringVector, write_atomic  # noqa: E402

OUT = ROOT / "bench" / "out" / "results_strength"
DOC = ROOT / "docs" / "results.md"
BEGIN, END = "<!-- results_strength:begin -->", "<!-- results_strength:end -->"


def save_json(name: str, data: dict) -> None:
    write_atomic(OUT / f"{name}.json", json.dumps(data, indent=1).encode(), overwrite=True)


_SHOWN: dict[str, int] = {}
_STARTED: dict[str, float] = {}


def _progress(stage: str, done: int, total: int) -> None:
    """One line per tenth of each stage, with the time so far."""
    _STARTED.setdefault(stage, time.perf_counter())
    tenth = 10 * done // max(1, total)
    if tenth > _SHOWN.get(stage, -1):
        _SHOWN[stage] = tenth
        print(f"  {stage}: {done}/{total} ({time.perf_counter() - _STARTED[stage]:.0f}s)", flush=True)


def _sweep_summary(result) -> dict:
    return {"verdict": result.verdict, "directions": result.to_dict()["directions"], "layers": result.layers,
            "values": result.values, "effect": result.effect, "interval": result.interval,
            "fluent": result.fluent, "wrong_way": result.wrong_way, "base_score": result.base_score,
            "items": result.items, "split": result.split}


def run_sentiment(args) -> None:
    """Sweep on the last val prompts, then generate the test prompts unsteered, at the up cell and at the down cell."""
    lm = load("smollm2")
    task = get_task("sentiment")
    config = SweepConfig(layers=args.layers, limit=args.val, max_new_tokens=args.tokens, batch_rows=64)
    start = time.perf_counter()
    result, vector = sweep(lm, task, config, progress=_progress)
    save_sweep(OUT / "sentiment_sweep", result, vector, overwrite=True)
    swept = time.perf_counter() - start
    prompts = task.eval_items("test", limit=args.test)
    chosen = {name: cell for name, cell in result.directions.items() if cell}
    cells = [UNSTEERED] + [Cell(c["layer"], c["multiplier"]) for c in chosen.values()]
    texts = generate_grid(lm, prompts, vector, cells, chat=task.chat, max_new_tokens=args.test_tokens, batch_rows=64)
    scores = [vader_scores(t) for t in texts]
    arms = {}
    for name, t, s in zip(["unsteered", *chosen], texts, scores):
        arms[name] = {"positive_share": sum(x >= 0.05 for x in s) / len(s),
                      "negative_share": sum(x <= -0.05 for x in s) / len(s),
                      "mean_compound": sum(s) / len(s),
                      "distinct2": sum(distinct_n(x, 2) for x in t) / len(t),
                      "repetition": sum(repetition_rate(x) for x in t) / len(t),
                      "example": t[0]}
        if name != "unsteered":
            iv = paired_interval(s, scores[0]).signed(1.0 if name == "up" else -1.0)
            arms[name].update(cell=chosen[name], test_interval=[iv.low, iv.high], test_change=iv.mean,
                              wrong_way=iv.fell)
    save_json("sentiment", {"sweep": _sweep_summary(result), "test": arms, "sizes": vars(args) | {"func": None},
                            "seconds": {"sweep": round(swept), "test": round(time.perf_counter() - start - swept)},
                            "threads": torch.get_num_threads()})
    print(json.dumps(arms, indent=1))


def run_refusal(args) -> None:
    """The CAA refusal A/B sweep on SmolLM2 that once stored a default from a +0.003 effect."""
    lm = load("smollm2")
    result, vector = sweep(lm, get_task("refusal"), SweepConfig(layers=args.layers, limit=args.val,
                                                                train_limit=args.train), progress=_progress)
    save_sweep(OUT / "refusal_sweep", result, vector, overwrite=True)
    save_json("refusal", {"sweep": _sweep_summary(result), "stored": vector.meta.recommended.to_json(),
                          "letter_shift": result.details["letter_shift"], "at_chance": result.details["at_chance"],
                          "sizes": {"layers": args.layers, "val": args.val, "train": args.train}})
    print(result.verdict, vector.meta.recommended)


def run_ab(args) -> None:
    """Per behaviour: sweep on val; on test, p(matching) at -s / 0 / +s of each direction's cell, with intervals."""
    lm = load("qwen")
    out = {}
    for behaviour in args.behaviours:
        _SHOWN.clear()
        _STARTED.clear()
        task = get_task(behaviour)
        start = time.perf_counter()
        result, vector = sweep(lm, task, SweepConfig(layers=args.layers, strengths=args.strengths, limit=args.val,
                                                     train_limit=args.train, batch_rows=32), progress=_progress)
        items = task.eval_items("test", limit=args.test)
        up, down = (p.to_json() if p else None for p in (result.directions["up"], result.directions["down"]))
        # The test grid: the up cell and its mirror, and the down cell and its mirror (what a user would apply).
        layer_cells = {}
        for cell in (up, down):
            if cell:
                layer_cells[cell["layer"]] = abs(cell["multiplier"])
        if not layer_cells:  # nothing reliable on val: still measure the layer the sweep scored best, to report it
            i, j = max(((i, j) for i in range(len(result.layers)) for j in range(len(result.values))),
                       key=lambda ij: abs(result.effect[ij[0]][ij[1]]))
            layer_cells[result.layers[i]] = abs(result.multipliers[i][j])
        cells = [UNSTEERED] + [Cell(layer, sign * m) for layer, m in layer_cells.items() for sign in (-1.0, 1.0)]
        grid = score_ab(lm, items, vector, cells, batch_rows=32, task=behaviour)
        groups = [p.positive == first_answer(p) for p in items] if grid.orders == 1 else None
        base = grid.summary(0)
        tests = []
        for k, (layer, m) in enumerate(layer_cells.items()):
            minus, plus = 1 + 2 * k, 2 + 2 * k
            spread = paired_interval(grid.item_scores(plus).tolist(), grid.item_scores(minus).tolist(), groups=groups)
            s_minus, s_plus = grid.summary(minus), grid.summary(plus)
            letter = s_plus["first_answer_share"] - s_minus["first_answer_share"]
            tests.append({"layer": layer, "multiplier": m, "strength": round(strength_of(vector, layer, m), 4),
                          "p_minus": s_minus["p_matching"], "p_plus": s_plus["p_matching"],
                          "spread": spread.mean, "spread_interval": [spread.low, spread.high],
                          "letter_share_minus": s_minus["first_answer_share"],
                          "letter_share_plus": s_plus["first_answer_share"],
                          "mass_minus": s_minus["answer_mass"], "mass_plus": s_plus["answer_mass"],
                          "words": letter_words(spread.mean, letter)})
        out[behaviour] = {"sweep": _sweep_summary(result), "letter_shift_val": result.details["letter_shift"],
                          "at_chance_val": result.details["at_chance"], "unsteered_test": base,
                          "at_chance_test": at_chance(base, len(items)), "test": tests,
                          "sizes": {"layers": args.layers, "strengths": args.strengths, "val": args.val,
                                    "train": args.train, "test": len(items)},
                          "seconds": round(time.perf_counter() - start)}
        save_json("ab_qwen", out)
        print(behaviour, result.verdict, json.dumps(tests, indent=1), flush=True)


INSTRUCTIONS = ("Answer cheerfully.", "Answer gloomily.", "Be brief.", "You are a pirate.")


@torch.inference_mode()
def instruction_kl(lm, texts) -> dict[str, float]:
    """The budget's reference: mean per-token KL(with instruction || without) over each neutral text's own tokens
    (first left out), when a one-sentence instruction and a newline precede the text."""
    tok = lm.tokenizer
    start = [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]
    out = {}
    for instruction in INSTRUCTIONS:
        head = tok(instruction + "\n", add_special_tokens=False)["input_ids"]
        total, count = 0.0, 0
        for text in texts:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            plain = torch.log_softmax(lm.model(torch.tensor([start + ids])).logits[0, 1:].float(), -1)
            told = torch.log_softmax(lm.model(torch.tensor([start + head + ids])).logits[0, 1 + len(head):].float(), -1)
            total += float((told.exp() * (told - plain)).sum(-1)[1:].sum())
            count += len(ids) - 1
        out[instruction] = round(total / count, 4)
    return out


def run_calibrate(args) -> None:
    """Calibrate the sentiment sweep's vector at its up layer: KL per strength and the chosen strengths."""
    lm = load("smollm2")
    vector = SteeringVector.load(OUT / "sentiment_sweep" / "vector.safetensors")
    saved = json.loads((OUT / "sentiment.json").read_text())
    layer = (saved["sweep"]["directions"]["up"] or {"layer": 15})["layer"]
    start = time.perf_counter()
    result, _ = calibrate(lm, vector, CalibrationConfig(layers=[layer]), progress=_progress)
    reference = instruction_kl(lm, neutral_texts())
    save_json("calibrate", {"layer": layer, **result.to_json(), "instruction_kl": reference,
                            "seconds": round(time.perf_counter() - start)})
    print(json.dumps(result.to_json(), indent=1))


def run_rerecommend(args) -> None:
    """Apply the current recommendation rule to the saved SmolLM2 sweeps (same scores, no model run): the
    minimum effect size was added after they ran."""
    from dataclasses import replace

    from steerlab.evaluation.metric_registry import get_metric
    from steerlab.evaluation.sweep import MIN_EFFECT_SHARE, SweepResult, recommend, stored_recommendation

    for name, metric in (("sentiment", "sentiment"), ("refusal", "ab")):
        folder = OUT / f"{name}_sweep"
        raw = json.loads((folder / "sweep.json").read_text())
        result = SweepResult(**raw)
        result.metric = metric
        result.direction = get_task(name).direction if metric != "ab" else 1.0
        result.min_effect = MIN_EFFECT_SHARE * get_metric(metric).span
        recommend(result)
        vector = SteeringVector.load(folder / "vector.safetensors")
        vector.meta = replace(vector.meta, recommended=stored_recommendation(result, vector.meta.recommended))
        save_sweep(folder, result, vector, overwrite=True)
        saved = json.loads((OUT / f"{name}.json").read_text())
        saved["sweep"] = _sweep_summary(result)
        if "stored" in saved:
            saved["stored"] = vector.meta.recommended.to_json()
        save_json(name, saved)
        print(name, result.verdict)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["sentiment", "refusal", "ab", "calibrate", "rerecommend", "write"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--strengths", type=lambda s: [float(x) for x in s.split(",")], default=[-0.4, -0.2, 0.2, 0.4])
    parser.add_argument("--val", type=int, default=40)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--train", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--test-tokens", type=int, default=32)
    parser.add_argument("--behaviours", type=lambda s: s.split(","), default=["sycophancy", "hallucination", "refusal"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.step == "write":
        from results_strength_doc import write_doc

        write_doc(OUT, DOC, BEGIN, END)
        return
    {"sentiment": run_sentiment, "refusal": run_refusal, "ab": run_ab, "calibrate": run_calibrate,
     "rerecommend": run_rerecommend}[args.step](args)


if __name__ == "__main__":
    main()
