"""SAE-feature steering (issue 23): an SAE trained here on SmolLM2, and its best sentiment feature steered beside
CAA (docs/results.md section "sae").

  python experiments/sae/run.py measure train      # SmolLM2 layer 15: record, train a TopK SAE, save it to the cache
  python experiments/sae/run.py measure sentiment  # rank features on the shipped pairs; feature vs CAA at one KL budget
  python experiments/sae/run.py render             # the section from results.json (no model)

The SAE is kept out of the repository: `measure train` writes it under steerlab's cache
($STEERLAB_CACHE/sae/smollm2-l15-topk32, a sae-lens folder) and rebuilds it from nothing (`make sae` runs it).
The sentiment step reuses experiments/strength's protocol (DExperts neutral prompts, VADER, distinct-2, paired
bootstrap intervals): strengths are calibrated on steerlab's neutral texts (no test prompt), and every number
comes from the held-out test prompts. Full outputs go to experiments/sae/out/ (not committed); what the
section shows goes to results.json (committed).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from common import (  # noqa: E402
    load_study_model,
    save_json,
    sentiment_arm,
    stage_progress,
    study_parser,
    write_results_section,
)

from steerlab.evaluation.ab import UNSTEERED, Cell  # noqa: E402
from steerlab.evaluation.calibrate import CalibrationConfig, calibrate, steers_kl  # noqa: E402
from steerlab.evaluation.sentiment import vader_scores  # noqa: E402
from steerlab.evaluation.sweep import generate_grid  # noqa: E402
from steerlab.evaluation.tasks import get_task  # noqa: E402
from steerlab.generation import GenerationConfig, encode_prompts, generate_ids  # noqa: E402
from steerlab.methods import fit  # noqa: E402
from steerlab.models import cache_dir  # noqa: E402
from steerlab.sae.clamp import FeatureClamp  # noqa: E402
from steerlab.sae.feature_vector import feature_vector  # noqa: E402
from steerlab.sae.features import pair_feature_means, rank_features, top_snippets  # noqa: E402
from steerlab.sae.formats import read_sae, write_saelens  # noqa: E402
from steerlab.sae.texts import load_texts  # noqa: E402
from steerlab.sae.train import TrainConfig, train_sae  # noqa: E402
from steerlab.strength import multiplier_for, neutral_texts  # noqa: E402

OUT = HERE / "out"
RESULTS = HERE / "results.json"
LAYER = 15
TRAIN = TrainConfig(layer=LAYER, width=4608, k=32, max_tokens=200_000, epochs=8)
TEXTS = "dexperts-sentiment"


def sae_folder() -> Path:
    return cache_dir() / "sae" / f"smollm2-l{LAYER}-topk{TRAIN.k}"


def run_train(args) -> None:
    """Record SmolLM2's layer-15 residuals on the DExperts sentiment prompts, train the SAE, save it to the cache."""
    lm = load_study_model("smollm2")
    texts = load_texts(TEXTS)
    sae, report = train_sae(lm, texts, TRAIN, progress=stage_progress)
    folder = write_saelens(sae, sae_folder(), overwrite=True, notes={"report": report.to_json(), "texts": TEXTS})
    print(json.dumps(report.to_json(), indent=1), f"-> {folder}")
    save_json(OUT / "train.json", {"report": report.to_json(), "config": TRAIN.__dict__, "texts": TEXTS})


def _continuations(lm, prompts: list[str], steer, tokens: int) -> list[str]:
    """Greedy continuations of the prompts under a hook steer (the clamp), 64 rows a batch."""
    ids = encode_prompts(lm, prompts, use_chat_template=False)
    config = GenerationConfig(max_new_tokens=tokens)
    return [
        text
        for start in range(0, len(ids), 64)
        for text in generate_ids(lm, ids[start : start + 64], steer, config=config)
    ]


def run_sentiment(args) -> None:
    """Rank the SAE's features on the shipped sentiment pairs; steer test prompts with the best feature (added at
    its calibrated strengths, and clamped) beside CAA calibrated to the same KL budget."""
    lm = load_study_model("smollm2")
    sae = read_sae(sae_folder())
    task = get_task("sentiment")
    pairs = task.train_data()
    start = time.perf_counter()
    positive, negative = pair_feature_means(lm, sae, pairs.pairs)
    ranked = rank_features(positive, negative)
    best = ranked[0]
    snippet_texts = load_texts(TEXTS)[: args.snippet_texts]
    snippets = top_snippets(lm, sae, [r.feature for r in ranked[:5]], snippet_texts, per_feature=3)
    ranked_at = time.perf_counter()
    vectors = {
        "feature": feature_vector(
            lm, sae, best.feature, sign=best.sign, source=str(sae_folder()), stats=best.to_json()
        ),
        "caa": fit(lm, pairs, "caa", layers=[LAYER]),
    }
    calibrations = {}
    for name, vector in vectors.items():
        result, _ = calibrate(lm, vector, CalibrationConfig(layers=[LAYER]), progress=stage_progress)
        calibrations[name] = result.to_json()
    # The clamp: the feature at its strongest firing on the snippet texts (toward the side it marks), or off.
    peak = snippets[best.feature][0].activation
    clamps = {"up": peak if best.sign > 0 else 0.0, "down": 0.0 if best.sign > 0 else peak}
    clamp_kl = dict(
        zip(
            clamps,
            steers_kl(lm, [FeatureClamp(sae, best.feature, v) for v in clamps.values()], neutral_texts()[:8]),
            strict=True,
        )
    )
    calibrated_at = time.perf_counter()
    prompts = task.eval_items("test", limit=args.test)
    texts = {"unsteered": None}
    for name, vector in vectors.items():
        cells, names = [], []
        for direction in ("up", "down"):
            strength = calibrations[name][direction]
            if strength is not None:
                cells.append(Cell(LAYER, multiplier_for(vector, LAYER, strength)))
                names.append(f"{name} {direction}")
        grid = generate_grid(lm, prompts, vector, [UNSTEERED, *cells], chat=task.chat, max_new_tokens=args.tokens)
        texts["unsteered"] = grid[0]
        texts.update(zip(names, grid[1:], strict=True))
    for direction, value in clamps.items():
        texts[f"clamp {direction}"] = _continuations(lm, prompts, FeatureClamp(sae, best.feature, value), args.tokens)
    scores = {name: vader_scores(t) for name, t in texts.items()}
    arms = {
        name: sentiment_arm(
            t,
            scores[name],
            None if name == "unsteered" else scores["unsteered"],
            -1.0 if name.endswith("down") else 1.0,
        )
        for name, t in texts.items()
    }
    save_json(
        OUT / "sentiment.json",
        {
            "best": best.to_json(),
            "ranked": [r.to_json() for r in ranked[:10]],
            "features_firing": len(ranked),
            "snippets": {str(f): [vars(x) for x in found] for f, found in snippets.items()},
            "calibration": calibrations,
            "clamps": {d: {"value": v, "kl": round(clamp_kl[d], 4)} for d, v in clamps.items()},
            "test": arms,
            "sizes": {
                "pairs": len(pairs),
                "test": len(prompts),
                "tokens": args.tokens,
                "snippet_texts": len(snippet_texts),
            },
            "seconds": {
                "ranking": round(ranked_at - start),
                "calibration": round(calibrated_at - ranked_at),
                "test": round(time.perf_counter() - calibrated_at),
            },
            "threads": torch.get_num_threads(),
        },
    )
    print(json.dumps(arms, indent=1))


def distil() -> None:
    def read(name: str) -> dict | None:
        path = OUT / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    new = {name: read(name) or old.get(name) for name in ("train", "sentiment")}
    save_json(RESULTS, new)


# ---- render -------------------------------------------------------------------------------------------------

INTRO = """## 6. Steering with SAE features (issue 23)

An SAE (sparse autoencoder) trained here on SmolLM2-135M-Instruct's residual stream, its features ranked by how
differently they fire on the two sides of steerlab's 72 shipped sentiment pairs, and the best feature steered on
held-out DExperts neutral prompts: added as a vector (its decoder row) at its KL-calibrated strength, beside CAA
from the same pairs calibrated to the same KL budget, and clamped through the SAE. Reproduce with `python
experiments/sae/run.py measure train` (or `make sae`) and `python experiments/sae/run.py measure sentiment`
(one thread each); the SAE is kept out of the repository, under steerlab's cache
(`$STEERLAB_CACHE/sae/smollm2-l15-topk32`, a sae-lens folder, 21 MB)."""


def _f(x: float | None, fmt: str = "{:+.3f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def train_section(data: dict) -> str:
    r, c = data["report"], data["config"]
    return "\n".join(
        [
            f"**The SAE.** TopK (k = {c['k']}), {r['d_sae']} features (8 x 576) at layer {c['layer']} of 30, trained "
            f"{c['epochs']} epochs (Adam, lr {c['lr']}, batches of {c['batch']} tokens) on {r['train_tokens']:,} tokens of "
            f"{data['texts']} (DExperts positive and negative prompts with their continuations; the neutral prompts "
            f"scored below are not among them), the start token left out. On {r['held_out_tokens']:,} tokens of held-out "
            f"texts ({c['held_out']:.0%} of the {r['texts']:,} texts, never trained on): explained variance "
            f"**{r['explained_variance']:.3f} at L0 {r['l0']:.0f}**, {r['dead_features']} dead features (never firing on "
            f"any recorded token). Cost: {r['seconds_recording']:.0f} s recording, {r['seconds_training']:.0f} s "
            f"training, {r['threads']} thread, peak memory {r['peak_memory_mb']:,.0f} MB (the process).",
        ]
    )


def sentiment_section(data: dict) -> str:
    best, sizes, cal = data["best"], data["sizes"], data["calibration"]
    lines = [
        f"**Features from pairs.** {data['features_firing']:,} features fire on the pairs' answer tokens; the five "
        f"that separate the sides best (AUROC over {sizes['pairs']} pairs: 1 = fires more on the positive side), each "
        f"with its three top activating tokens («») in the first {sizes['snippet_texts']:,} DExperts texts:",
        "",
        "| feature | AUROC | mean activation positive / negative | top snippets |",
        "|---|---|---|---|",
    ]
    for row in data["ranked"][:5]:
        snippets = " / ".join(
            x["snippet"].replace("|", "\\|").replace("\n", " ") for x in data["snippets"][str(row["feature"])]
        )
        lines.append(
            f"| {row['feature']} | {row['auroc']:.3f} | {row['mean_positive']:.2f} / {row['mean_negative']:.2f} | {snippets} |"
        )
    arms, budget = data["test"], cal["feature"]["kl_budget"]

    def chosen(name: str, direction: str) -> str:
        strength = cal[name][direction]
        if strength is None:
            return f"{direction} none"
        return f"{direction} {strength:+.2f} (KL {cal[name]['kl'][direction][str(abs(strength))]:.2f})"

    clamps, peak = data["clamps"], max(c["value"] for c in data["clamps"].values())
    lines += [
        "",
        f"**Steering, held-out prompts.** Feature {best['feature']} fires on the "
        f"{'positive' if best['sign'] > 0 else 'negative'} side, so its vector is {'+' if best['sign'] > 0 else '-'}"
        f"W_dec[{best['feature']}]. It and CAA (layer 15, same pairs) were each calibrated by `steerlab vector "
        f"calibrate` at layer 15: the largest norm-relative strength per direction within a KL budget of {budget} "
        f"nats per token and the fluency bound, on steerlab's neutral texts (no test prompt). Feature: "
        f"{chosen('feature', 'up')}, {chosen('feature', 'down')}; CAA: {chosen('caa', 'up')}, {chosen('caa', 'down')}. "
        f"The clamp sets the feature's activation at every token but the first: clamp up to {clamps['up']['value']:g} "
        f"(KL {clamps['up']['kl']:.2f}), clamp down to {clamps['down']['value']:g} (KL {clamps['down']['kl']:.2f}); "
        f"{peak:g} is the feature's strongest activation in the snippet texts, 0 switches it off. {sizes['test']} "
        f"test prompts (the first of the task's test split), {sizes['tokens']} greedy tokens each, VADER compound; "
        "the wanted change is the mean change against unsteered on the same prompts, signed so the wanted direction "
        "is positive, with its paired bootstrap 95% interval.",
        "",
        "| arm | positive share | negative share | mean compound | wanted change [95% interval] | distinct-2 | example |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, arm in arms.items():
        change = (
            "-"
            if "test_change" not in arm
            else f"{arm['test_change']:+.3f} [{arm['test_interval'][0]:+.3f}, {arm['test_interval'][1]:+.3f}]"
        )
        example = arm["example"].strip().replace("|", "\\|").replace("\n", " ")[:60]
        lines.append(
            f"| {name} | {arm['positive_share']:.2f} | {arm['negative_share']:.2f} | {arm['mean_compound']:+.3f} | "
            f"{change} | {arm['distinct2']:.2f} | {example} |"
        )
    seconds = data["seconds"]
    lines += [
        "",
        *_goal_lines(arms),
        "",
        f"Time: {seconds['ranking']} s ranking features (with snippets), {seconds['calibration']} s calibrating, "
        f"{seconds['test']} s generating the test arms; {data['threads']} thread.",
    ]
    return "\n".join(lines)


def _goal_lines(arms: dict) -> list[str]:
    """What the table says about the goals, from the numbers (nothing hand-written about outcomes)."""
    base = arms["unsteered"]
    out = []
    for name in [n for n in arms if n != "unsteered"]:
        arm = arms[name]
        low, high = arm["test_interval"]
        verdict = (
            "moves sentiment the wanted way"
            if low > 0
            else "no reliable effect"
            if high > 0
            else "moves it the wrong way"
        )
        out.append(
            f"- {name}: {verdict} (interval {low:+.3f} to {high:+.3f}); positive share {base['positive_share']:.2f} -> "
            f"{arm['positive_share']:.2f}, negative share {base['negative_share']:.2f} -> {arm['negative_share']:.2f}, "
            f"distinct-2 {base['distinct2']:.2f} -> {arm['distinct2']:.2f}."
        )
    return out


def render(doc: Path) -> None:
    data = json.loads(RESULTS.read_text())
    parts = [INTRO]
    if data.get("train"):
        parts.append(train_section(data["train"]))
    if data.get("sentiment"):
        parts.append(sentiment_section(data["sentiment"]))
    write_results_section("sae", "\n\n".join(parts), doc)


def main(argv: list[str] | None = None) -> None:
    parser = study_parser(__doc__.splitlines()[0], ["train", "sentiment"])
    parser.add_argument("--test", type=int, default=100, help="held-out DExperts neutral prompts to score")
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated per prompt")
    parser.add_argument("--snippet-texts", type=int, default=1000, help="DExperts texts searched for top snippets")
    args = parser.parse_args(argv)
    if args.action == "measure":
        if args.step is None:
            parser.error("measure needs a step: train or sentiment")
        torch.set_num_threads(args.threads)
        OUT.mkdir(parents=True, exist_ok=True)
        {"train": run_train, "sentiment": run_sentiment}[args.step](args)
        distil()
    render(args.doc)


if __name__ == "__main__":
    main()
