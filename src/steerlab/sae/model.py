"""The SAE object: encoder and decoder of one residual stream point, and the rule that it fits a loaded model.

Layer is steerlab's convention everywhere: layer i = the output of decoder block i (sae-lens's
`blocks.i.hook_resid_post`). Encoding follows the published SAEs: pre = (x - b_dec if apply_b_dec_to_input
else x) @ W_enc + b_enc, then ReLU, JumpReLU (ReLU(pre) where pre > threshold, else 0) or TopK (the k largest
pre-activations, ReLU'd); decoding is f @ W_dec + b_dec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .. import vector as vector_rules
from ..errors import UsageError
from ..meta import VectorMeta
from ..models import LayerError, check_layers

if TYPE_CHECKING:
    from ..models import LoadedModel

ACTIVATIONS = ("relu", "jumprelu", "topk")


@dataclass
class SAE:
    """W_enc [d_model, d_sae], b_enc [d_sae], W_dec [d_sae, d_model], b_dec [d_model], threshold [d_sae]
    (JumpReLU only), `k` (TopK only); the model it reads (name, fingerprint where known) and its layer."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    layer: int
    activation: str = "relu"
    threshold: torch.Tensor | None = None
    k: int | None = None
    model_name: str = ""
    model_fingerprint: str = ""
    apply_b_dec_to_input: bool = False

    def __post_init__(self) -> None:
        problem = shape_problem(self)
        if problem:
            raise UsageError(f"SAE: {problem}")

    @property
    def d_model(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d_model] -> [..., d_sae], before the activation function."""
        w = self.W_enc.to(x.dtype)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec.to(x.dtype)
        return x @ w + self.b_enc.to(x.dtype)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.activation == "jumprelu":
            assert self.threshold is not None
            return pre.relu() * (pre > self.threshold.to(pre.dtype))
        if self.activation == "topk":
            assert self.k is not None
            top = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        return pre.relu()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre_activations(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec.to(f.dtype) + self.b_dec.to(f.dtype)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The parameters by their published names (threshold only for JumpReLU)."""
        out = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        return out

    def identity(self) -> VectorMeta:
        """The SAE's model as steer metadata states one, so `vector.same_model` decides for SAEs too."""
        return VectorMeta(self.model_name or "an unnamed model", self.d_model, 0, "sae", self.model_fingerprint)

    def check_model(self, lm: LoadedModel) -> None:
        """Refuse, before any model work, a model of another hidden size, another model where the SAE names
        its model (fingerprint where both have one, else the name), or a model without the SAE's layer."""
        meta = self.identity()
        vector_rules.check_hidden_size(meta, lm, "SAE")
        if (self.model_fingerprint or self.model_name) and not vector_rules.same_model(meta, lm):
            fix = (
                f"use an SAE trained on {lm.name} (steerlab sae train)"
                if self.model_fingerprint
                else f"if it is the same model under another name, set its model_name to {lm.name!r}"
            )
            raise vector_rules.IncompatibleVectorError(
                f"this SAE was trained on {vector_rules.describe_model(meta)} and cannot read "
                f"{vector_rules.describe_model(lm)}; {fix}"
            )
        try:
            check_layers(lm, [self.layer], f" (the SAE reads layer {self.layer})")
        except LayerError as exc:
            raise vector_rules.IncompatibleVectorError(str(exc)) from None


def shape_problem(sae: SAE) -> str | None:
    """What is inconsistent in an SAE's parameters, or None: the one check every reader and the constructor make."""
    if sae.activation not in ACTIVATIONS:
        return f"activation '{sae.activation}' is not one of {', '.join(ACTIVATIONS)}"
    if sae.W_enc.ndim != 2:
        return f"W_enc has shape {tuple(sae.W_enc.shape)}; expected [d_model, d_sae]"
    d_model, d_sae = sae.W_enc.shape
    expected = {"b_enc": (d_sae,), "W_dec": (d_sae, d_model), "b_dec": (d_model,)}
    if sae.threshold is not None:
        expected["threshold"] = (d_sae,)
    for name, shape in expected.items():
        got = tuple(getattr(sae, name).shape)
        if got != shape:
            return f"{name} has shape {got}; expected {shape} for W_enc of shape {(d_model, d_sae)}"
    if (sae.activation == "jumprelu") != (sae.threshold is not None):
        return "a JumpReLU SAE needs a threshold, and only a JumpReLU SAE has one"
    if sae.activation == "topk" and not (sae.k is not None and 0 < sae.k <= d_sae):
        return f"a TopK SAE needs k in 1..{d_sae}; got {sae.k}"
    if sae.layer < 0:
        return f"layer {sae.layer} is negative"
    return None
