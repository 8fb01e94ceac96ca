"""Directional ablation of one direction at every layer (Arditi et al. 2024), at run time or baked into weights.

Run time: the residual stream's input (the embeddings, as block 0 receives them) and every write into it
(the output of each block's attention and MLP) lose their component along the direction, so no layer
ever sees it. Export: the same, folded into the weights that write the stream (embeddings, the last
projection of each attention and MLP, their biases), giving a model that needs no hooks and whose
outputs equal the run-time ablation. Writers are found by structure: a block's direct children that
hold matrices (attention, MLP; norms hold only vectors), and in each the last matrix whose output is
the hidden size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch

from .errors import UsageError
from .files import refuse_existing, write_folder
from .models import LoadedModel
from .operators import ablate, unit
from .steering import HookHandle, broadcast_rows, enter_scope, in_scope, scaled_rows
from .vector import SteeringVector


def _out_features(module: torch.nn.Module) -> int | None:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or isinstance(module, torch.nn.Embedding):
        return None
    nf = getattr(module, "nf", None)
    return int(nf) if nf is not None else int(weight.shape[0])  # GPT-2's Conv1D stores [in, out]


def stream_writers(lm: LoadedModel) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """(child, projection) for each block child that writes the residual stream, in model order."""
    found = []
    for block in lm.layers:
        for child in block.children():
            projections = [m for m in child.modules() if _out_features(m) == lm.hidden_size]
            if projections:
                found.append((child, projections[-1]))
    if not found:
        raise UsageError(f"{lm.name}: found no attention or MLP projections in its decoder blocks")
    return found


def ablation_direction(vector: SteeringVector, layer: int | None = None) -> tuple[torch.Tensor, int]:
    """The one direction to ablate: the vector at `layer`, else its recommended layer, else its only layer."""
    if layer is None:
        rec = vector.meta.recommended.layer
        if rec is not None:
            layer = rec
        elif len(vector.directions) == 1:
            layer = next(iter(vector.directions))
        else:
            raise UsageError(
                "the vector has several layers and no recommended one; say which layer's direction to ablate"
            )
    if layer not in vector.directions:
        raise UsageError(f"the vector has no direction at layer {layer}; it has {vector.layers}")
    return vector.directions[layer], layer


class DirectionalAblation:
    """A steer (kind "ablation") that removes one direction from the residual stream at every layer.

    `rows` (one flag per batch row, None = every row) says which rows it applies to, as a per-row
    multiplier does for a vector: the server batches requests that ablate beside requests that do not.
    Rows left out, and rows whose scale is 0 (the originals beside steered rows), keep every hidden state
    bit for bit.
    """

    kind = "ablation"

    def __init__(self, vector: SteeringVector, layer: int | None = None, rows: Sequence[bool] | None = None):
        self.vector = vector
        self.direction, self.layer = ablation_direction(vector, layer)
        self.rows = None if rows is None else torch.tensor([bool(r) for r in rows], dtype=torch.float32)
        if self.rows is not None and self.rows.numel() == 0:
            raise UsageError("rows must name at least one row (or be None for every row)")

    def attach(
        self,
        lm: LoadedModel,
        *,
        row_scale: torch.Tensor | None = None,
        prompt_lengths: torch.Tensor | None = None,
        task: str | None = None,
    ) -> AblationHandle:
        self.vector.check_compatible(lm, [self.layer], task=task)
        dtype = next(lm.model.parameters()).dtype
        scale = self.rows
        if row_scale is not None:
            row_scale = torch.as_tensor(row_scale, dtype=torch.float32)
            scale = row_scale if scale is None else scaled_rows(scale, row_scale)
        return AblationHandle(lm, self.direction.to(device=lm.device, dtype=dtype), scale)


class AblationHandle(HookHandle):
    """Hooks of a DirectionalAblation; a context manager that always removes them."""

    def __init__(self, lm: LoadedModel, direction: torch.Tensor, row_scale: torch.Tensor | None):
        self.direction = direction
        self.rows = None if row_scale is None else torch.as_tensor(row_scale, dtype=torch.float32) != 0
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        enter_scope(self)
        try:
            self._handles.append(lm.layers[0].register_forward_pre_hook(self._input_hook, with_kwargs=True))
            for child, _ in stream_writers(lm):
                self._handles.append(child.register_forward_hook(self._output_hook))
        except Exception:
            self.remove()
            raise

    def _ablated(self, hidden: torch.Tensor) -> torch.Tensor:
        out = ablate(hidden, self.direction, torch.ones(()))
        if self.rows is None:
            return out
        rows = broadcast_rows(self.rows, hidden.shape[0], "row scales").to(hidden.device)
        return torch.where(rows[:, None, None], out, hidden)

    def _input_hook(self, module, args, kwargs):
        if not in_scope(self):
            return None
        if args:
            return (self._ablated(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": self._ablated(kwargs["hidden_states"])}

    def _output_hook(self, module, args, output):
        if not in_scope(self):
            return None
        if isinstance(output, tuple):
            return (self._ablated(output[0]), *output[1:])
        return self._ablated(output)


def _untie_output_embeddings(lm: LoadedModel) -> None:
    """Give the LM head its own copy of tied embeddings: only the stream's input is orthogonalised."""
    out, inp = lm.model.get_output_embeddings(), lm.model.get_input_embeddings()
    if out is not None and out.weight is inp.weight:
        out.weight = torch.nn.Parameter(inp.weight.detach().clone())
    for config in {id(c): c for c in (lm.model.config, lm.model.config.get_text_config())}.values():
        config.tie_word_embeddings = False


@torch.no_grad()
def orthogonalize(lm: LoadedModel, vector: SteeringVector, layer: int | None = None) -> LoadedModel:
    """Fold directional ablation into `lm`'s weights, in place: nothing it writes into the stream has the direction.

    Raises if the stream still gets the direction afterwards (an architecture that normalises what its
    projections write, such as Gemma 2's post-norms, cannot be orthogonalised by its weights).
    """
    direction, layer = ablation_direction(vector, layer)
    vector.check_compatible(lm, [layer])
    _untie_output_embeddings(lm)
    writers = stream_writers(lm)
    for module in lm.model.modules():
        if isinstance(module, torch.nn.Embedding) and module.embedding_dim == lm.hidden_size:
            u = unit(direction).to(module.weight)
            module.weight -= (module.weight @ u)[:, None] * u
    for _, proj in writers:
        weight, bias = cast(torch.Tensor, proj.weight), cast("torch.Tensor | None", getattr(proj, "bias", None))
        u = unit(direction).to(weight)
        if hasattr(proj, "nf"):  # [in, out]
            weight -= (weight @ u)[:, None] * u
        else:  # [out, in]
            weight -= u[:, None] * (u @ weight)[None, :]
        if bias is not None:
            bias -= (bias @ u) * u
    _check_no_component(lm, direction)
    return lm


def _check_no_component(lm: LoadedModel, direction: torch.Tensor) -> None:
    """Run a few tokens and require every block's output to have (almost) no component along the direction."""
    seen: list[float] = []

    def read(module, args, output):
        hidden = (output[0] if isinstance(output, tuple) else output).float()
        along = (hidden @ unit(direction).float().to(hidden.device)).abs().max()
        seen.append(float(along / hidden.norm(dim=-1).max().clamp(min=1e-12)))

    handles = [block.register_forward_hook(read) for block in lm.layers]
    try:
        ids = torch.arange(1, 9, device=lm.device)[None] % lm.model.config.get_text_config().vocab_size
        lm.model(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    tolerance = 1e-2 if next(lm.model.parameters()).dtype in (torch.float16, torch.bfloat16) else 1e-4
    if max(seen) > tolerance:
        raise UsageError(
            f"{lm.name}: after orthogonalising, a block output still has {max(seen):.3g} of its norm along "
            "the direction; this architecture transforms what its projections write (e.g. post-norms)"
        )


def export_orthogonalized(
    lm: LoadedModel, vector: SteeringVector, out: str | Path, layer: int | None = None, *, overwrite: bool = False
) -> Path:
    """Orthogonalise `lm` in place and save it with its tokenizer as a `save_pretrained` folder, swapped in
    atomically (`files.write_folder`): a kill leaves the old folder or the new one. Refuses an existing `out`
    unless `overwrite`."""
    out = Path(out)
    refuse_existing(out, overwrite)  # before the weights change
    orthogonalize(lm, vector, layer)
    model = lm.model
    if getattr(model, "hf_quantizer", None) is not None:  # loaded from GGUF: the weights are plain after loading
        model.hf_quantizer = None  # type: ignore[assignment]  # undeclared in PreTrainedModel, so typed as a submodule
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)

    return write_folder(out, fill, overwrite=overwrite)
