"""Steering inside a vLLM worker: a custom op after each decoder block, reading the step's plan from buffers.

vLLM flattens a continuous batch into one row of tokens: request after request, each a chunk of its prompt
(prefill, maybe chunked) or its newest token (decode). Before each forward the plan is written as data into
persistent per-layer buffers of fixed shape `[layers, tokens, slots]`: for every token and slot, an operator
code (0 = nothing), a coefficient and a row of the direction table. A forward hook on each block calls the op
`steerlab::steer_block_`, which torch.compile keeps as one opaque call in vLLM's compiled graph, so steering
needs no eager mode. The op reads only those buffers; on the host it skips layers, slots and operators the
step does not use, work whose result would be the identity.

vLLM's decoder blocks (Llama, Qwen2, Mistral, ...) return `(hidden, residual)` and leave the residual addition
to the next block's fused add+norm. The stream after block i is `hidden + residual`; a steered token gets
`operator(stream, direction, coefficient)` (steerlab.operators, the same arithmetic as steering.py) in
`hidden` and 0 in `residual`, so the next block's `hidden + 0` reproduces the Hugging Face path's value bit for
bit. Tokens no slot selects keep both tensors bit for bit (no multiply-by-zero). A block that returns one
tensor is steered on that tensor.

Never silent: every layer the plan steers must report that its op ran in that forward; if one did not (a
replayed CUDA graph, a runner or model that bypassed the hooks), `end()` raises instead of letting vLLM
return unsteered text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...operators import OPERATORS, UNIT_OPERATORS, unit
from .errors import SteeringNotApplied, VLLMIncompatible
from .request import MAX_ITEMS, Term

# Operator codes in the plan buffers; 0 means "this slot does nothing to this token".
CODES = {name: i + 1 for i, name in enumerate(OPERATORS)}
NAMES = {code: name for name, code in CODES.items()}
SLOTS = MAX_ITEMS  # slot k of a token holds its request's k-th item at that layer
# The op finds its worker by key, a constant in the compiled graph (vLLM caches graphs on disk, so never an
# object id): one runner per process, key 0; tests that build several give their own keys.
_WORKERS: dict[int, WorkerSteering] = {}


@torch.library.custom_op("steerlab::steer_block_", mutates_args=("hidden", "residual"))
def steer_block_(hidden: torch.Tensor, residual: torch.Tensor | None, worker: int, layer: int) -> None:
    """Apply this step's plan for `layer` in place to a block's output (hidden [tokens, d], residual or None)."""
    _WORKERS[worker].apply_(hidden, residual, layer)


@steer_block_.register_fake
def _(hidden: torch.Tensor, residual: torch.Tensor | None, worker: int, layer: int) -> None:
    return None


@dataclass(frozen=True)
class Row:
    """One request's slice of the flattened batch: tokens [start, end), its prompt length and its terms."""

    start: int
    end: int
    prompt_len: int
    terms: Sequence[Term]


@dataclass
class LayerUse:
    """What the plan uses at one layer this step: how many slots and which operator codes."""

    slots: int
    codes: set[int]


def _split(output):
    """(hidden, residual or None) of a decoder block's output."""
    if isinstance(output, torch.Tensor):
        return output, None
    if (
        isinstance(output, tuple)
        and len(output) >= 2
        and isinstance(output[1], torch.Tensor)
        and output[1].shape == output[0].shape
    ):
        return output[0], output[1]
    return output[0], None


def find_layers(model: nn.Module, num_layers: int) -> dict[int, nn.Module]:
    """{layer index: block} of the decoder blocks this process holds, found by structure, not by model name.

    The blocks are the ModuleList of `num_layers` entries holding the most parameters. Under pipeline
    parallelism a stage holds only its own blocks; the others are parameter-less placeholders and are left out.
    """
    best = None
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            n_params = sum(p.numel() for p in module.parameters())
            if n_params and (best is None or n_params > best[0]):
                best = (n_params, module)
    if best is None:
        raise VLLMIncompatible(
            f"steerlab: found no list of {num_layers} decoder blocks in {type(model).__name__}; "
            "the vLLM plugin steers decoder-only transformers"
        )
    return {i: block for i, block in enumerate(best[1]) if any(True for _ in block.parameters())}


class WorkerSteering:
    """The plan buffers, the direction table and the hooks of one worker's decoder blocks."""

    def __init__(
        self,
        layers: dict[int, nn.Module],
        directions: Callable[[str, int], torch.Tensor],
        dtype: torch.dtype,
        device: torch.device,
        *,
        hidden_size: int,
        num_layers: int,
        max_tokens: int = 256,
        prune: bool = True,
        key: int = 0,
    ):
        self.layers = layers
        self.dtype, self.device = dtype, device
        self.prune = prune  # False: every layer runs every slot and operator (what a captured graph must hold)
        self._directions = directions  # (sha256, layer) -> [hidden] float32 direction
        self._rows: dict[tuple[str, int], int] = {}
        self.raw = torch.zeros(16, hidden_size, dtype=dtype, device=device)  # directions as given (add)
        self.unit = torch.zeros(16, hidden_size, dtype=dtype, device=device)  # unit directions (other operators)
        self._alloc(num_layers, max_tokens)
        self._use: dict[int, LayerUse] = {}
        self._fired: set[int] = set()
        self.seen: set[int] = set()  # layers whose op has run at least once (the warm-up checks all of them)
        self.id = key
        _WORKERS[key] = self
        self._handles = [block.register_forward_hook(self._hook(i)) for i, block in layers.items()]

    def _alloc(self, n_layers: int, tokens: int) -> None:
        self.coef = torch.zeros(n_layers, tokens, SLOTS, dtype=self.dtype, device=self.device)
        self.index = torch.zeros(n_layers, tokens, SLOTS, dtype=torch.long, device=self.device)
        self.code = torch.zeros(n_layers, tokens, SLOTS, dtype=torch.int8, device=self.device)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if _WORKERS.get(self.id) is self:
            del _WORKERS[self.id]

    def _hook(self, index: int):
        worker = self.id

        def hook(module, args, output):
            hidden, residual = _split(output)
            torch.ops.steerlab.steer_block_(hidden, residual, worker, index)
            return output

        return hook

    # ---- the op -------------------------------------------------------------------------------------------

    def apply_(self, hidden: torch.Tensor, residual: torch.Tensor | None, layer: int) -> None:
        self.seen.add(layer)
        use = self._use.get(layer) if self.prune else LayerUse(SLOTS, set(NAMES))
        if use is None:
            return
        self._fired.add(layer)
        n = hidden.shape[0]
        coef, index, code = self.coef[layer, :n], self.index[layer, :n], self.code[layer, :n]
        stream = hidden if residual is None else hidden + residual
        for k in range(use.slots):
            for c in sorted(use.codes):
                table = self.raw if NAMES[c] == "add" else self.unit
                out = UNIT_OPERATORS[NAMES[c]](stream, table[index[:, k]], coef[:, k, None])
                stream = torch.where((code[:, k] == c).unsqueeze(-1), out, stream)
        steered = (code[:, : use.slots] != 0).any(-1, keepdim=True)
        hidden.copy_(torch.where(steered, stream, hidden))
        if residual is not None:
            residual.masked_fill_(steered, 0)

    # ---- the plan -----------------------------------------------------------------------------------------

    def table_row(self, sha256: str, layer: int) -> int:
        """The direction table's row for a steer's direction at `layer` (converted once to the model's dtype)."""
        key = (sha256, layer)
        row = self._rows.get(key)
        if row is not None:
            return row
        row = self._rows[key] = len(self._rows)
        if row >= self.raw.shape[0]:
            self.raw = torch.cat([self.raw, torch.zeros_like(self.raw)])
            self.unit = torch.cat([self.unit, torch.zeros_like(self.unit)])
        direction = self._directions(sha256, layer).to(device=self.device, dtype=self.dtype)
        self.raw[row] = direction
        self.unit[row] = unit(direction) if bool(direction.any()) else 0  # a zero direction can only add (nothing)
        return row

    def begin(self, rows: Sequence[Row], positions: torch.Tensor) -> None:
        """Write the coming forward's plan: `positions` are the absolute positions of the flattened tokens."""
        n = int(positions.shape[0])
        if n > self.coef.shape[1]:
            self._alloc(self.coef.shape[0], max(n, 2 * self.coef.shape[1]))
        if len(self._rows) >= 4096:  # a long-running server: start the table afresh, between steps only
            self._rows.clear()
        pos = positions.numpy() if isinstance(positions, torch.Tensor) else np.asarray(positions)
        staged: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        use: dict[int, LayerUse] = {}
        for row in rows:
            slot: dict[int, int] = {}
            local = pos[row.start : row.end]
            for term in row.terms:
                sel = row.start + _select(term.positions, local, row.prompt_len)
                if sel.size == 0:
                    continue
                for layer, value in term.layers:
                    if layer not in self.layers or value == 0.0:  # 0 leaves the row off, as in steering.py
                        continue
                    k = slot.get(layer, 0)
                    if k >= SLOTS:
                        raise RuntimeError(f"steerlab: more than {SLOTS} items at layer {layer} in one request")
                    slot[layer] = k + 1
                    c, i, o = staged.get(layer) or staged.setdefault(
                        layer,
                        (
                            np.zeros((n, SLOTS), np.float32),
                            np.zeros((n, SLOTS), np.int64),
                            np.zeros((n, SLOTS), np.int8),
                        ),
                    )
                    c[sel, k], i[sel, k], o[sel, k] = value, self.table_row(term.sha256, layer), CODES[term.operator]
                    entry = use.setdefault(layer, LayerUse(0, set()))
                    entry.slots = max(entry.slots, k + 1)
                    entry.codes.add(CODES[term.operator])
        for layer, (c, i, o) in staged.items():
            # float32 coefficients cast to the model's dtype, as steering.py casts its per-row coefficients.
            self.coef[layer, :n].copy_(torch.from_numpy(c).to(self.dtype))
            self.index[layer, :n].copy_(torch.from_numpy(i))
            self.code[layer, :n].copy_(torch.from_numpy(o))
        if not self.prune:  # every layer is read: clear what the plan does not set
            for layer in range(self.code.shape[0]):
                if layer not in staged:
                    self.code[layer, :n] = 0
        self._use, self._fired = use, set()

    def end(self) -> None:
        """Close the step; raise if a layer the plan steers did not run its op (its text would be unsteered)."""
        missing = sorted(set(self._use) - self._fired)
        self.abandon()
        if missing:
            raise SteeringNotApplied(
                f"steerlab: this step steers layer(s) {', '.join(map(str, missing))}, but their steering op did not "
                "run in the model's forward (a replayed CUDA graph, or a runner or model that bypasses the block "
                "hooks); refusing to return unsteered text. Run vLLM with CUDA graphs off (--enforce-eager or "
                "-cc.cudagraph_mode=NONE) on the V1 model runner (VLLM_USE_V2_MODEL_RUNNER=0)"
            )

    def check_warmup(self) -> None:
        """After the model's first forward: every block's op must have run, else this forward cannot steer."""
        missing = sorted(set(self.layers) - self.seen)
        if missing:
            raise SteeringNotApplied(
                f"steerlab: the model's forward did not run the steering op of layer(s) {', '.join(map(str, missing))}. "
                "A compiled graph from vLLM's cache may predate the plugin: delete ~/.cache/vllm/torch_compile_cache "
                "(or set VLLM_DISABLE_COMPILE_CACHE=1) and start again"
            )

    def abandon(self) -> None:
        self._use, self._fired = {}, set()

    @property
    def planned(self) -> dict[int, LayerUse]:
        return self._use


def _select(positions: str, local: np.ndarray, prompt_len: int) -> np.ndarray:
    """Indices (within a request's slice) of the tokens a term's positions select."""
    if positions == "all":
        return np.arange(local.shape[0])
    if positions == "prompt":
        return np.nonzero(local < prompt_len)[0]
    return np.nonzero(local >= prompt_len - 1)[0]  # "generated": every position that predicts a new token
