"""Clamp one SAE feature's activation to a value (steer kind "sae_clamp"), on the HF path.

At the SAE's layer each token's residual h moves along the feature's decoder row only, by the amount that
makes the SAE read the value: h' = h + (t - a_i(h)) / g * W_dec[i], where a_i is the feature's
pre-activation, g = W_enc[:, i] . W_dec[i], and t the pre-activation that reads as the value (the value
itself; to switch a feature off, min(a_i, 0)). With g = 1 and the
feature firing this is exactly encode -> replace f_i by the value -> decode, plus the SAE's reconstruction
error kept (h - decode(encode(h))), so nothing the SAE misses is lost; when g != 1 it is the one move along
W_dec[i] after which re-encoding reads the value. For TopK SAEs the value is read back when the feature then
ranks among the k largest. Each row's first token (the attention sink) is left as it is, and rows whose scale
is 0 (originals beside steered rows) stay bit for bit as they were.
The clamp file holds the whole SAE (TopK needs every feature to read one) and the clamp's feature and value.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from ..meta import VectorMeta
from ..models import LoadedModel
from ..steering import HookHandle, SteeringError, absolute_positions, broadcast_rows, enter_scope, in_scope
from ..vector import VectorFileError, read_steer_file, write_steer_file
from .model import SAE


class FeatureClamp:
    """A steer (kind "sae_clamp") that sets feature `feature` of `sae` to `value` at every position."""

    kind = "sae_clamp"

    def __init__(self, sae: SAE, feature: int, value: float, meta: VectorMeta | None = None):
        if not 0 <= feature < sae.d_sae:
            raise UsageError(f"feature {feature} is out of range: the SAE has features 0..{sae.d_sae - 1}")
        value = float(value)
        lowest = 0.0 if sae.threshold is None else max(0.0, float(sae.threshold[feature]))
        if not math.isfinite(value) or not (value == 0 or value > lowest):
            raise UsageError(
                f"value {value}: feature {feature} reads 0 or a finite value above {lowest:g} "
                f"({'its JumpReLU threshold' if sae.threshold is not None else 'ReLU'})"
            )
        gain = float(sae.W_enc[:, feature] @ sae.W_dec[feature])
        if gain <= 0:
            raise UsageError(
                f"feature {feature}: its encoder and decoder point apart (W_enc . W_dec = {gain:.3g}), so no move "
                "along its decoder row can set it; choose another feature"
            )
        self.sae, self.feature, self.value, self.gain = sae, feature, value, gain
        self.meta = meta

    def clamped(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., d_model] with the feature set to the value (the rule in the module's docstring)."""
        sae, i = self.sae, self.feature
        x = hidden.float()
        pre = (x - sae.b_dec.to(x.device) if sae.apply_b_dec_to_input else x) @ sae.W_enc[:, i].to(
            x.device
        ) + sae.b_enc[i]
        target = torch.full_like(pre, self.value) if self.value > 0 else pre.clamp(max=0.0)
        step = ((target - pre) / self.gain).unsqueeze(-1) * sae.W_dec[i].to(x.device)
        return (x + step).to(hidden.dtype)

    def attach(
        self,
        lm: LoadedModel,
        *,
        row_scale: torch.Tensor | None = None,
        prompt_lengths: torch.Tensor | None = None,
        task: str | None = None,
    ) -> ClampHandle:
        self.sae.check_model(lm)
        rows = None if row_scale is None else torch.as_tensor(row_scale, dtype=torch.float32) != 0
        return ClampHandle(lm, self, rows)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary for `steerlab vector info`."""
        info = self.meta.to_json() if self.meta else {}
        info.update(feature=self.feature, value=self.value, layer=self.sae.layer, d_sae=self.sae.d_sae)
        return info

    # ---- files ------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, lm: LoadedModel, *, source: str = "", overwrite: bool = False) -> Path:
        """Safetensors with the SAE's parameters and the clamp in the steerlab metadata (kind "sae_clamp")."""
        sae = self.sae
        meta = self.meta or VectorMeta.for_model(lm, "sae_clamp")
        config = {
            "sae": source,
            "feature": self.feature,
            "value": self.value,
            "layer": sae.layer,
            "activation": sae.activation,
            "k": sae.k,
            "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        }
        meta = replace(meta, kind="sae_clamp", operator="clamp", config=config)
        return write_steer_file(path, sae.tensors(), meta, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureClamp:
        path = Path(path)
        meta, tensors = read_steer_file(path, "sae_clamp", "an SAE clamp")
        c = meta.config
        types: dict[str, tuple[type, ...]] = {
            "feature": (int,),
            "value": (int, float),
            "layer": (int,),
            "activation": (str,),
            "apply_b_dec_to_input": (bool,),
        }
        for key, kinds in types.items():
            value = c.get(key)
            if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
                raise VectorFileError(f"{path}: config.{key} is missing or of the wrong type")
        k = c.get("k")
        if k is not None and (not isinstance(k, int) or isinstance(k, bool)):
            raise VectorFileError(f"{path}: config.k should be an integer or null")
        names = {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"threshold"} if c["activation"] == "jumprelu" else set())
        if set(tensors) != names:
            raise VectorFileError(
                f"{path}: expected tensors {', '.join(sorted(names))}; got {', '.join(sorted(tensors))}"
            )
        try:
            t = {name: tensor.float() for name, tensor in tensors.items()}
            sae = SAE(
                t["W_enc"],
                t["b_enc"],
                t["W_dec"],
                t["b_dec"],
                threshold=t.get("threshold"),
                layer=c["layer"],
                activation=c["activation"],
                k=k,
                model_name=meta.model_name,
                model_fingerprint=meta.model_fingerprint,
                apply_b_dec_to_input=c["apply_b_dec_to_input"],
            )
            return cls(sae, c["feature"], c["value"], meta)
        except UsageError as exc:
            raise VectorFileError(f"{path}: {str(exc).removeprefix('SAE: ')}") from None


class ClampHandle(HookHandle):
    """The hooks of a FeatureClamp: one on the model that reads each token's position, one at the SAE's layer
    that clamps every token but each row's first (the attention sink, whose activations lie far outside what an
    SAE is trained on; steerlab's trainer leaves it out) and padding. A context manager that always removes them."""

    def __init__(self, lm: LoadedModel, clamp: FeatureClamp, rows: torch.Tensor | None):
        self.clamp, self.rows = clamp, rows
        self._positions: torch.Tensor | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        enter_scope(self)
        try:
            self._handles.append(lm.model.register_forward_pre_hook(self._track, with_kwargs=True))
            self._handles.append(lm.layers[clamp.sae.layer].register_forward_hook(self._hook))
        except Exception:
            self.remove()
            raise

    def _track(self, module, args, kwargs) -> None:
        if in_scope(self):
            self._positions = absolute_positions(args, kwargs)[0]

    def _hook(self, module, args, output):
        if not in_scope(self):
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        if self._positions is None:
            raise SteeringError("an SAE clamp reads token positions; call the model itself, not one block")
        selected = self._positions.to(hidden.device) > 0
        if self.rows is not None:
            selected = selected & broadcast_rows(self.rows, hidden.shape[0], "row scales").to(hidden.device)[:, None]
        steered = torch.where(selected.unsqueeze(-1), self.clamp.clamped(hidden), hidden)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered
