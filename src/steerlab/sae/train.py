"""Train a TopK SAE (Gao et al. 2024) on one layer's residual stream, for a model that has none.

Why our own trainer and not sae-lens (docs/sae.md): sae-lens 6.54 installs beside our pins, but brings ~90 packages
and trains through TransformerLens's own copy of the model, not the Hugging Face model steerlab loads offline.
TopK is the quickest route to a given explained variance at a stated L0: L0 is k by construction, so there is
no sparsity penalty to tune. Activations are recorded once (the forward stops at the layer; the first token,
the attention sink with ~10x the norm of the others, is left out), a share of the texts is held out, and the SAE
trains on the others' tokens with Adam, decoder rows kept at unit norm. The report measures the held-out texts' tokens.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from ..activations import token_activations, with_start_token
from ..batching import DEFAULT_BATCH_TOKENS
from ..errors import UsageError
from ..models import LoadedModel, check_layers
from .model import SAE

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class TrainConfig:
    """What `train_sae` was asked: the layer, the SAE's size (width None: 8 x hidden) and k, how many tokens."""

    layer: int
    width: int | None = None
    k: int = 32
    max_tokens: int = 200_000
    context: int = 128
    epochs: int = 4
    batch: int = 1024
    lr: float = 1e-3
    held_out: float = 0.05
    seed: int = 0

    def check(self) -> None:
        for name in ("k", "max_tokens", "context", "epochs", "batch"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.width is not None and self.width < self.k:
            raise UsageError(f"width {self.width} must be at least k ({self.k})")
        if not 0 < self.held_out < 0.5 or not self.lr > 0:
            raise UsageError("held_out must be in (0, 0.5) and lr positive")


@dataclass(frozen=True)
class TrainReport:
    """What the training found, on the tokens of held-out texts: explained variance, mean L0; dead features
    (none of all the tokens fires them); and the cost."""

    explained_variance: float
    l0: float
    dead_features: int
    d_sae: int
    train_tokens: int
    held_out_tokens: int
    texts: int
    seconds_recording: float
    seconds_training: float
    peak_memory_mb: float
    threads: int

    def to_json(self) -> dict:
        return asdict(self)


def text_sequences(lm: LoadedModel, texts: Sequence[str], context: int) -> list[list[int]]:
    """Each text's tokens after the tokenizer's start token, cut to `context` tokens."""
    tok = lm.tokenizer
    start = with_start_token(tok, [])
    return [start + tok(t, add_special_tokens=False)["input_ids"][:context] for t in texts if t.strip()]


def record_training_tokens(
    lm: LoadedModel, texts: Sequence[str], config: TrainConfig, progress: Progress | None = None
) -> list[torch.Tensor]:
    """Per text, [tokens, hidden]: its token activations at the layer (the start token left out), texts taken
    in order until max_tokens."""
    seqs, total = [], 0
    for seq in text_sequences(lm, texts, config.context):
        if total >= config.max_tokens:
            break
        seqs.append(seq)
        total += len(seq) - 1
    if not seqs:
        raise UsageError("no text to train on")
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress:
            progress("recording", done[0], len(seqs))

    acts = token_activations(lm, seqs, config.layer, batch_tokens=DEFAULT_BATCH_TOKENS, progress=tick)
    return [a[1:] for a in acts]


def explained_variance(x: torch.Tensor, reconstruction: torch.Tensor) -> float:
    """1 - residual sum of squares / total sum of squares around the mean, over all tokens and dimensions."""
    total = float(((x - x.mean(0)) ** 2).sum())
    return 1.0 - float(((x - reconstruction) ** 2).sum()) / total


def train_sae(
    lm: LoadedModel, texts: Sequence[str], config: TrainConfig, progress: Progress | None = None
) -> tuple[SAE, TrainReport]:
    """Record the layer's activations on `texts`, train a TopK SAE, and measure it on held-out tokens."""
    config.check()
    check_layers(lm, [config.layer])
    start = time.perf_counter()
    per_text = record_training_tokens(lm, texts, config, progress)
    recorded = time.perf_counter() - start
    gen = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(per_text), generator=gen).tolist()
    n_held = max(1, int(len(per_text) * config.held_out))  # whole texts held out: their tokens are never trained on
    held = torch.cat([per_text[i] for i in order[:n_held]])
    train = torch.cat([per_text[i] for i in order[n_held:]])
    acts = torch.cat([held, train])
    width = config.width or 8 * lm.hidden_size
    sae = _fit_topk(train, width, config, gen, progress)
    sae.layer, sae.model_name, sae.model_fingerprint = config.layer, lm.name, lm.fingerprint
    with torch.no_grad():
        counts = torch.zeros(width)
        for chunk in acts.split(4096):
            counts += (sae.encode(chunk) > 0).sum(0)
        codes = sae.encode(held)
        ev = explained_variance(held, sae.decode(codes))
    report = TrainReport(
        explained_variance=round(ev, 4),
        l0=round(float((codes > 0).sum(1).float().mean()), 2),
        dead_features=int((counts == 0).sum()),
        d_sae=width,
        train_tokens=len(train),
        held_out_tokens=len(held),
        texts=len(per_text),
        seconds_recording=round(recorded, 1),
        seconds_training=round(time.perf_counter() - start - recorded, 1),
        peak_memory_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        threads=torch.get_num_threads(),
    )
    return sae, report


def _fit_topk(
    train: torch.Tensor, width: int, config: TrainConfig, gen: torch.Generator, progress: Progress | None
) -> SAE:
    d = train.shape[1]
    w_dec = torch.randn(width, d, generator=gen)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    params = {
        "W_enc": w_dec.T.clone().requires_grad_(),
        "b_enc": torch.zeros(width, requires_grad=True),
        "W_dec": w_dec.requires_grad_(),
        "b_dec": train.mean(0).clone().requires_grad_(),
    }
    sae = SAE(
        params["W_enc"],
        params["b_enc"],
        params["W_dec"],
        params["b_dec"],
        layer=config.layer,
        activation="topk",
        k=config.k,
        apply_b_dec_to_input=True,
    )
    optimizer = torch.optim.Adam(params.values(), lr=config.lr)
    steps = config.epochs * ((len(train) + config.batch - 1) // config.batch)
    step = 0
    for _ in range(config.epochs):
        for idx in torch.randperm(len(train), generator=gen).split(config.batch):
            x = train[idx]
            loss = ((sae.decode(sae.encode(x)) - x) ** 2).sum(1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                params["W_dec"] /= params["W_dec"].norm(dim=1, keepdim=True).clamp(min=1e-8)
            step += 1
            if progress:
                progress("training", step, steps)
    for tensor in params.values():
        tensor.requires_grad_(False)
    return sae
