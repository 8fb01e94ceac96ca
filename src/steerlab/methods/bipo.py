"""BiPO (Cao et al., NeurIPS 2024): a steering vector trained to produce the behaviour, not measured as a mean.

For a pair (prompt x, positive y+, negative y-) and a sign d drawn per pair and step, the loss is
    -log sigmoid(beta * d * ([log p_dv(y+|x) - log p_0(y+|x)] - [log p_dv(y-|x) - log p_0(y-|x)]))
where p_dv is the model with d*v added to the steered blocks' outputs (at every position, as a vector
steers by default) and p_0 the unsteered model: adding +v should raise y+ over y- relative to the model
itself, adding -v the reverse. Only v is trained (AdamW): the base weights are frozen and get no
gradient, the reference log-probabilities are computed once, every batch is padded once, and training
stops early when the loss on a held-out split of the pairs stops falling. The result is an ordinary
vector (kind "vector", method "bipo") that every steering path takes unchanged.

The forward runs whole, not from cached activations at the steered layer: the blocks below it take no
gradient (so they store nothing for backward), and starting above it would need the model's own causal
mask, rotary embeddings and per-layer attention types rebuilt outside it.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F

from ..activations import record_pair_activations, tokenize_pair
from ..batching import DEFAULT_BATCH_TOKENS, TokenIds, check_batch, pad, positions_from_mask, token_batches
from ..data import ContrastiveDataset, DatasetError
from ..errors import UsageError
from ..models import LoadedModel, check_layers
from ..operators import add
from ..strength import norms_metadata
from ..vector import SteeringVector, VectorMeta
from .training import frozen, head_inputs, head_logits

METHOD = "bipo"


@dataclass
class BiPOConfig:
    """Settings for BiPO, documented in configs/bipo.yaml; every default is what an empty config gives.

    layers: decoder blocks to train a vector for (empty = the model's middle layer; several are trained
    together, each with its own vector); init: "caa" (start from the mean difference) or "zeros";
    epochs: most passes over the training pairs; lr, weight_decay: AdamW's; beta: the preference
    objective's temperature; val_fraction: pairs held out for early stopping (0 = none, train all
    epochs); patience: epochs without a lower validation loss before stopping; batch_size: most pairs
    per step; batch_tokens: most tokens per step (both answers of every pair, rows x longest row); seed:
    split, batch order and signs.
    """

    layers: list[int] = field(default_factory=list)
    init: Literal["caa", "zeros"] = "caa"
    epochs: int = 10
    lr: float = 0.02
    weight_decay: float = 0.0
    beta: float = 0.1
    val_fraction: float = 0.2
    patience: int = 2
    batch_size: int = 8
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "patience"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "beta"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise UsageError(f"{name} must be a positive number, got {getattr(self, name)}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UsageError(f"weight_decay must be 0 or more, got {self.weight_decay}")
        if not 0 <= self.val_fraction < 1:
            raise UsageError(
                f"val_fraction must be at least 0 and below 1 (0 = no early stopping), got {self.val_fraction}"
            )
        check_batch(self.batch_size, self.batch_tokens)


def held_out_count(pairs: int, val_fraction: float) -> int:
    """Pairs held out for early stopping: val_fraction of them, at least one when asked for, never all."""
    return 0 if val_fraction == 0 else min(max(1, round(pairs * val_fraction)), pairs - 1)


@dataclass
class _Batch:
    """Both answers of some pairs, padded once: rows 2i and 2i+1 are pair i's positive and negative."""

    inputs: dict[str, torch.Tensor]
    predicts: torch.Tensor  # [rows, tokens] bool: positions whose next token is an answer token
    targets: torch.Tensor  # [answer tokens]: those next tokens, in the order predicts selects them
    rows: torch.Tensor  # [answer tokens]: the row each one belongs to
    reference: torch.Tensor  # [rows]: the unsteered model's log-probability of each row's answer


def _batch(lm: LoadedModel, encoded: Sequence[tuple[TokenIds, TokenIds, TokenIds]]) -> _Batch:
    seqs, answer_lengths = [], []
    for prefix, pos, neg in encoded:
        for answer in (pos, neg):
            seqs.append(prefix + answer)
            answer_lengths.append(len(answer))
    ids, mask = pad(seqs, lm.tokenizer.pad_token_id, left=True)
    width = ids.shape[1]
    predicts = torch.zeros_like(mask, dtype=torch.bool)
    for row, n in enumerate(answer_lengths):
        predicts[row, width - n - 1 : width - 1] = True
    targets = ids[:, 1:][predicts[:, :-1]]
    rows = torch.arange(len(seqs))[:, None].expand(-1, width)[predicts]
    device = lm.device
    inputs = {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "position_ids": positions_from_mask(mask).to(device),
    }
    return _Batch(inputs, predicts.to(device), targets.to(device), rows.to(device), torch.zeros(len(seqs)))


def answer_logprobs(lm: LoadedModel, batch: _Batch) -> torch.Tensor:
    """Each row's summed log-probability of its answer tokens [rows]; only those positions go through the head."""
    hidden = head_inputs(lm, **batch.inputs, use_cache=False)
    logits = head_logits(lm, hidden[batch.predicts])
    token_logprobs = logits.log_softmax(-1).gather(-1, batch.targets[:, None])[:, 0]
    rows = batch.predicts.shape[0]
    return torch.zeros(rows, device=logits.device).index_add(0, batch.rows, token_logprobs).cpu()


@contextmanager
def added(lm: LoadedModel, vectors: Mapping[int, torch.Tensor], signs: torch.Tensor) -> Iterator[None]:
    """Add signs[row] * vectors[layer] to the steered blocks' outputs at every position, keeping its gradient."""
    coefficient = signs.to(lm.device)[:, None, None]

    def hook_for(vector: torch.Tensor):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            steered = add(hidden, vector.to(hidden.dtype), coefficient.to(hidden.dtype))
            return (steered, *output[1:]) if isinstance(output, tuple) else steered

        return hook

    handles = [lm.layers[layer].register_forward_hook(hook_for(v)) for layer, v in vectors.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def preference_loss(
    lm: LoadedModel, vectors: Mapping[int, torch.Tensor], batch: _Batch, signs: torch.Tensor, beta: float
) -> torch.Tensor:
    """Mean BiPO loss of the batch's pairs with each pair steered by its sign (+1 or -1) times the vectors."""
    with added(lm, vectors, signs.repeat_interleave(2)):
        gain = answer_logprobs(lm, batch) - batch.reference
    margin = signs * (gain[0::2] - gain[1::2])
    return -F.logsigmoid(beta * margin).mean()


def fit(
    lm: LoadedModel,
    data: ContrastiveDataset,
    config: BiPOConfig | None = None,
    *,
    task: str = "",
    progress: Callable[[int], object] | None = None,
    report: Callable[[str], None] | None = None,
) -> SteeringVector:
    """Train a BiPO vector at the configured layers from contrastive pairs.

    `progress` counts training pairs per step (epochs x training pairs in all, fewer when training stops
    early); each epoch's losses go to `report` (default: printed to stderr). The metadata's fit_stats hold
    the loss curve, the epoch kept (0: the start had the lowest validation loss and is returned), the time,
    and each layer's norm and cosine to the CAA vector of the training pairs.
    """
    config = config or BiPOConfig()
    report = report or (lambda message: print(message, file=sys.stderr))
    n = len(data.pairs)
    n_val = held_out_count(n, config.val_fraction)
    if n - n_val < 1 or (config.val_fraction > 0 and n < 2):
        raise DatasetError(
            f"{data.name}: BiPO needs at least {2 if config.val_fraction > 0 else 1} pairs "
            f"(val_fraction={config.val_fraction} holds some out); give more pairs or set val_fraction=0"
        )
    layers = check_layers(lm, sorted(set(config.layers or [lm.default_layer()])))
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(n, generator=generator).tolist()
    val_ids, train_ids = sorted(order[:n_val]), sorted(order[n_val:])
    encoded = [tokenize_pair(lm, pair) for pair in data.pairs]
    caa = record_pair_activations(
        lm, [data.pairs[i] for i in train_ids], layers, batch_size=config.batch_size, batch_tokens=config.batch_tokens
    )
    caa_vectors = (caa.positive - caa.negative).mean(0)  # [n_layers, hidden]

    def batches(ids: list[int]) -> list[tuple[list[int], _Batch]]:
        lengths = [len(encoded[i][0]) + max(len(encoded[i][1]), len(encoded[i][2])) for i in ids]
        cut = token_batches(lengths, max_tokens=max(1, config.batch_tokens // 2), max_rows=config.batch_size)
        return [([ids[j] for j in group], _batch(lm, [encoded[ids[j]] for j in group])) for group in cut]

    train_batches, val_batches = batches(train_ids), batches(val_ids)
    with torch.no_grad():
        for _, batch in train_batches + val_batches:
            batch.reference = answer_logprobs(lm, batch)

    start = caa_vectors.clone() if config.init == "caa" else torch.zeros_like(caa_vectors)
    params = {layer: torch.nn.Parameter(start[i].to(lm.device)) for i, layer in enumerate(layers)}
    optimizer = torch.optim.AdamW(list(params.values()), lr=config.lr, weight_decay=config.weight_decay)

    def validation_loss() -> float:
        total = 0.0
        with torch.no_grad():
            for ids, batch in val_batches:
                for sign in (1.0, -1.0):
                    loss = preference_loss(lm, params, batch, torch.full((len(ids),), sign), config.beta)
                    total += float(loss) * len(ids)
        return total / (2 * n_val)

    train_curve: list[float] = []
    val_curve: list[float] = []
    best = {layer: p.detach().clone() for layer, p in params.items()}
    best_val, best_epoch, stale = validation_loss() if n_val else math.inf, 0, 0
    with frozen(lm.model):
        for epoch in range(1, config.epochs + 1):
            total = 0.0
            for b in torch.randperm(len(train_batches), generator=generator).tolist():
                ids, batch = train_batches[b]
                signs = torch.randint(0, 2, (len(ids),), generator=generator).float() * 2 - 1
                optimizer.zero_grad(set_to_none=True)
                loss = preference_loss(lm, params, batch, signs, config.beta)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(ids)
                if progress:
                    progress(len(ids))
            train_curve.append(round(total / len(train_ids), 5))
            if not n_val:
                best, best_epoch = {layer: p.detach().clone() for layer, p in params.items()}, epoch
                report(f"bipo epoch {epoch}/{config.epochs}: train loss {train_curve[-1]:.4f}")
                continue
            val_curve.append(round(validation_loss(), 5))
            report(
                f"bipo epoch {epoch}/{config.epochs}: train loss {train_curve[-1]:.4f}, val loss {val_curve[-1]:.4f}"
            )
            if val_curve[-1] < best_val:
                best_val, best_epoch, stale = val_curve[-1], epoch, 0
                best = {layer: p.detach().clone() for layer, p in params.items()}
            else:
                stale += 1
                if stale >= config.patience:
                    report(f"bipo: stopped after epoch {epoch}; keeping epoch {best_epoch} (lowest val loss)")
                    break
    directions = {layer: best[layer].float().cpu() for layer in layers}
    fit_stats = {
        "train_pairs": len(train_ids),
        "val_pairs": n_val,
        "epochs_run": len(train_curve),
        "best_epoch": best_epoch,
        "loss_train": train_curve,
        "loss_val": val_curve,
        "fit_seconds": round(time.perf_counter() - started, 2),
        "norm": {str(layer): round(float(directions[layer].norm()), 4) for layer in layers},
        "caa_norm": {str(layer): round(float(caa_vectors[i].norm()), 4) for i, layer in enumerate(layers)},
        "cosine_to_caa": {
            str(layer): round(float(F.cosine_similarity(directions[layer], caa_vectors[i], dim=0)), 4)
            for i, layer in enumerate(layers)
        },
    }
    meta = VectorMeta.for_model(
        lm,
        METHOD,
        config=asdict(replace(config, layers=layers)),
        fit_stats=fit_stats,
        dataset=data.describe(),
        task=task,
        residual_norms=norms_metadata(lm, layers),
    )
    return SteeringVector(directions, meta)
