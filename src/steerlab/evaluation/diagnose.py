"""Is my data any good? Held-out checks of how well contrastive pairs isolate a direction, per layer.

One forward pass records both sides of every pair at all chosen layers. The pairs are split (seeded)
into a train part and a held-out part; the direction is the mean difference (CAA) on the train part,
and on the held-out part we measure:

- auroc: how well projections onto the direction separate positive from negative activations
  (0.5 = chance, 1 = perfect; rank-based, so scale and offset do not matter);
- pair_accuracy: share of held-out pairs whose positive projects higher than its own negative; for A/B and
  Yes/No pairs, whose wanted answer is " Yes" for some and " No" for others, the mean of that share within
  each answer group (balanced), so a direction that only tells the word "Yes" from "No" scores 0.5, not the
  share of pairs answered "Yes";
- consistency: mean cosine between each held-out pair's difference and the train direction (0 when
  differences point anywhere, 1 when every pair moves the same way);
- relative_norm: the all-pairs vector's norm over the layer's mean residual norm (multiplier m adds
  m x relative_norm of a typical activation).

Verdict thresholds (VERDICT_RULES below): a layer is usable when held-out AUROC >= 0.8 and
consistency >= 0.1; the data "separates" when some usable layer outside the first and last 10% of
the stack exists, "separates weakly" when the best AUROC there is >= 0.65, else "does not separate".
Edge layers are excluded from the suggestions because steering at the first blocks (token identity)
or the last ones (right before the logits) rarely changes behaviour even when their activations differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..activations import PairActivations, record_pair_activations
from ..data import ContrastiveDataset
from ..errors import UsageError
from ..models import LoadedModel
from .auroc import auroc

USABLE_AUROC = 0.8
WEAK_AUROC = 0.65
USABLE_CONSISTENCY = 0.1
EDGE_FRACTION = 0.1
SUGGESTED_LAYERS = 3
FEW_HELDOUT = 10
VERDICT_RULES = (
    f"usable layer: held-out AUROC >= {USABLE_AUROC} and consistency >= {USABLE_CONSISTENCY}; "
    f"separates weakly: best AUROC >= {WEAK_AUROC}; the first and last {EDGE_FRACTION:.0%} of layers are not suggested"
)


@dataclass
class LayerDiagnosis:
    """Held-out numbers for one layer (see the module docstring for what each means)."""

    layer: int
    auroc: float
    pair_accuracy: float
    consistency: float
    vector_norm: float
    residual_norm: float
    relative_norm: float


@dataclass
class Diagnosis:
    """Per-layer held-out numbers, the layers worth trying, and a plain-language verdict."""

    layers: list[LayerDiagnosis]
    status: str  # "separates", "weak" or "none"
    suggested_layers: list[int]
    verdict: str
    n_train: int
    n_heldout: int
    holdout: float
    seed: int
    rules: str = VERDICT_RULES
    dataset: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, rounded; what `vector diagnose --json` prints and vector metadata stores."""
        out = asdict(self)
        out["layers"] = [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in out["layers"]
        ]
        return out

    def layer(self, layer: int) -> LayerDiagnosis:
        for row in self.layers:
            if row.layer == layer:
                return row
        raise KeyError(f"layer {layer} was not diagnosed; diagnosed layers: {[r.layer for r in self.layers]}")


def diagnose(
    lm: LoadedModel,
    data: ContrastiveDataset,
    layers: Sequence[int] | None = None,
    *,
    holdout: float = 0.25,
    seed: int = 0,
    batch_size: int = 16,
    progress: Callable[[int], object] | None = None,
) -> tuple[Diagnosis, PairActivations]:
    """Record the pairs once at `layers` (default: all) and diagnose them; the activations come back for reuse."""
    layers = sorted(set(layers)) if layers else list(range(lm.num_layers))
    check_sizes(len(data), holdout)
    acts = record_pair_activations(lm, data.pairs, layers, batch_size=batch_size, progress=progress)
    groups = [p.positive for p in data.pairs] if all(p.kind == "ab" for p in data.pairs) else None
    diagnosis = diagnose_activations(acts, lm.num_layers, holdout=holdout, seed=seed, groups=groups)
    diagnosis.dataset = data.describe()
    return diagnosis, acts


def check_sizes(n_pairs: int, holdout: float) -> None:
    """Refuse a split that leaves fewer than 2 pairs on either side, saying how many are needed."""
    if not 0 < holdout < 1:
        raise UsageError(f"holdout must be a fraction between 0 and 1, got {holdout}")
    n_held = round(n_pairs * holdout)
    if n_held < 2 or n_pairs - n_held < 2:
        raise UsageError(
            f"{n_pairs} pairs are too few to diagnose with holdout {holdout}: both the train and the "
            f"held-out part need at least 2 pairs (use at least {math.ceil(2 / min(holdout, 1 - holdout))} "
            "pairs; 50+ give stable numbers)"
        )


def split_indices(n_pairs: int, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded (train, held-out) split of pair indices."""
    check_sizes(n_pairs, holdout)
    order = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(seed)).tolist()
    n_held = round(n_pairs * holdout)
    return sorted(order[n_held:]), sorted(order[:n_held])


def diagnose_activations(
    acts: PairActivations, num_layers: int, *, holdout: float = 0.25, seed: int = 0, groups: Sequence[str] | None = None
) -> Diagnosis:
    """The held-out numbers and verdict from recorded pair activations ([n_pairs, n_layers, hidden] per side).

    `groups` (each pair's wanted answer, for A/B and Yes/No data) makes pair_accuracy balanced over them."""
    n = acts.positive.shape[0]
    train, held = split_indices(n, holdout, seed)
    pos, neg = acts.positive.double(), acts.negative.double()
    diffs = pos - neg
    direction = diffs[train].mean(0)  # [n_layers, hidden]
    full = diffs.mean(0)
    residual = torch.cat([pos, neg]).norm(dim=-1).mean(0)  # [n_layers]
    rows = []
    for i, layer in enumerate(acts.layers):
        d = direction[i]
        proj_pos = pos[held, i] @ d
        proj_neg = neg[held, i] @ d
        labels = [True] * len(held) + [False] * len(held)
        cos = torch.nn.functional.cosine_similarity(diffs[held, i], d.expand(len(held), -1), dim=-1)
        norm = float(full[i].norm())
        rows.append(
            LayerDiagnosis(
                layer=layer,
                auroc=auroc((proj_pos.tolist() + proj_neg.tolist()), labels),
                pair_accuracy=balanced_share(proj_pos > proj_neg, [groups[j] for j in held] if groups else None),
                consistency=float(cos.mean()),
                vector_norm=norm,
                residual_norm=float(residual[i]),
                relative_norm=norm / float(residual[i]) if residual[i] > 0 else 0.0,
            )
        )
    status, suggested, verdict = judge(rows, num_layers, len(held))
    return Diagnosis(rows, status, suggested, verdict, len(train), len(held), holdout, seed)


def balanced_share(hits: torch.Tensor, groups: Sequence[str] | None) -> float:
    """Share of True in `hits`, or the mean of the shares within each group."""
    if not groups or len(set(groups)) < 2:
        return float(hits.double().mean())
    shares = [
        float(hits[[k for k, g in enumerate(groups) if g == name]].double().mean()) for name in sorted(set(groups))
    ]
    return sum(shares) / len(shares)


def judge(rows: Sequence[LayerDiagnosis], num_layers: int, n_heldout: int) -> tuple[str, list[int], str]:
    """(status, layers worth trying, plain-language verdict) from the per-layer numbers, by VERDICT_RULES."""
    edge = math.ceil(num_layers * EDGE_FRACTION)
    inner = [r for r in rows if edge <= r.layer < num_layers - edge] or list(rows)
    usable = [r for r in inner if r.auroc >= USABLE_AUROC and r.consistency >= USABLE_CONSISTENCY]
    best = max(inner, key=lambda r: (r.auroc, r.consistency))
    noisy = (
        f" Only {n_heldout} held-out pairs: these numbers are noisy; more pairs give firmer ones."
        if n_heldout < FEW_HELDOUT
        else ""
    )
    if usable:
        # Among separating layers, the most consistent differences make the best steering directions.
        picks = sorted(usable, key=lambda r: r.consistency, reverse=True)[:SUGGESTED_LAYERS]
        suggested = sorted(r.layer for r in picks)
        top = picks[0]
        verdict = (
            f"The pairs separate on held-out data: at layer {top.layer} the direction ranks positive above "
            f"negative with AUROC {top.auroc:.2f}, and held-out pair differences point its way "
            f"(mean cosine {top.consistency:.2f}). Layers worth trying: {', '.join(map(str, suggested))}. "
            f"There the vector is {top.relative_norm:.1%} of a typical activation, so multiplier m adds "
            f"about m x {top.relative_norm:.1%}.{noisy}"
        )
        return "separates", suggested, verdict
    if best.auroc >= WEAK_AUROC:
        verdict = (
            f"The pairs separate only weakly: the best held-out AUROC is {best.auroc:.2f} (layer {best.layer}, "
            f"mean cosine {best.consistency:.2f}). A vector may work at layer {best.layer} but expect a small or "
            "noisy effect; pairs that differ only in the concept (same prompt, same length, same topic) "
            f"and more of them usually help.{noisy}"
        )
        return "weak", [best.layer], verdict
    verdict = (
        f"The pairs do not isolate a direction: the best held-out AUROC is {best.auroc:.2f} (layer {best.layer}; "
        "0.5 is chance) and pair differences do not agree (mean cosine "
        f"{best.consistency:.2f}). A vector built from them will likely do nothing. Check that positive and "
        "negative are not swapped or mixed between pairs, and that each pair differs in the concept "
        f"rather than in topic.{noisy}"
    )
    return "none", [], verdict


def format_diagnosis(diagnosis: Diagnosis | dict[str, Any]) -> str:
    """A table of the per-layer numbers and the verdict, for the terminal."""
    d = diagnosis.to_dict() if isinstance(diagnosis, Diagnosis) else diagnosis
    lines = [
        f"held-out diagnosis: {d['n_train']} train / {d['n_heldout']} held-out pairs (seed {d['seed']})",
        f"{'layer':>5}  {'AUROC':>6}  {'pair acc':>8}  {'cosine':>6}  {'|v|':>8}  {'|resid|':>8}  {'|v|/resid':>9}",
    ]
    suggested = set(d["suggested_layers"])
    for r in d["layers"]:
        mark = "  <-" if r["layer"] in suggested else ""
        lines.append(
            f"{r['layer']:>5}  {r['auroc']:>6.3f}  {r['pair_accuracy']:>8.3f}  {r['consistency']:>6.3f}  "
            f"{r['vector_norm']:>8.3f}  {r['residual_norm']:>8.2f}  {r['relative_norm']:>9.2%}{mark}"
        )
    lines.append("")
    lines.append(d["verdict"])
    return "\n".join(lines)
