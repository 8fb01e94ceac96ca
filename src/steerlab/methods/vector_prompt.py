"""Vector-prompt: distil an instruction into a steering vector, the shift it causes in the residual stream.

For every example input x with an output y, the vector at a layer is the mean over y's tokens of
act(instruction + x + y) - act(x + y), averaged over examples. The inputs are the pairs' prompts and
the outputs both of each pair's answers, so the vector holds what the instruction changes whatever
the answer, and applying it at multiplier 1 adds the instruction's own average shift at that layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from ..activations import lead_text, record_activations, with_start_token
from ..batching import DEFAULT_BATCH_TOKENS, check_batch
from ..data import ContrastiveDataset, DatasetError, format_prompt
from ..errors import UsageError
from ..models import LoadedModel
from ..strength import norms_metadata
from ..vector import SteeringVector, VectorMeta
from .prompt import PromptSteering, check_instruction


@dataclass
class VectorPromptConfig:
    """Settings for vector-prompt; every default is what an empty config gives.

    instruction: the prompt to distil (required; no default, e.g. "Always answer cheerfully.").
    placement: where the instruction goes while measuring, as in prompt steering: "system" (default)
    or "prefix" (before the user's text).
    layers: decoder blocks to build for; empty (default) = the model's middle layer.
    batch_size: most examples per forward pass (default 16); batch_tokens: most tokens per forward pass
    (examples x longest example; default 4096).
    """

    instruction: str = ""
    placement: Literal["system", "prefix"] = "system"
    layers: list[int] = field(default_factory=list)
    batch_size: int = 16
    batch_tokens: int = DEFAULT_BATCH_TOKENS

    def __post_init__(self) -> None:
        check_instruction(self.instruction, self.placement)
        check_batch(self.batch_size, self.batch_tokens)


def fit(
    lm: LoadedModel,
    data: ContrastiveDataset,
    config: VectorPromptConfig | None = None,
    *,
    task: str = "",
    progress: Callable[[int], object] | None = None,
) -> SteeringVector:
    """Distil config.instruction into a vector (method "vector_prompt") over the pairs' prompts and answers.

    `progress` counts examples over both passes (without, then with the instruction): 2 x pairs in all.
    """
    if config is None:
        raise UsageError("vector_prompt needs a config with an instruction, e.g. VectorPromptConfig(instruction='...')")
    if not data.pairs:
        raise DatasetError(f"{data.name}: no pairs to distil the instruction over")
    layers = sorted(set(config.layers or [lm.default_layer()]))
    steering = PromptSteering(config.instruction, config.placement)
    tok, chat = lm.tokenizer, bool(lm.use_chat_template)
    plain, instructed = [], []
    for pair in data.pairs:
        answers = [tok(a, add_special_tokens=False)["input_ids"] for a in (pair.positive, pair.negative)]
        if not all(answers):
            raise DatasetError(f"a pair's answer tokenizes to nothing: {pair.positive!r} / {pair.negative!r}")
        without = format_prompt(tok, pair.prompt, use_chat_template=chat) + lead_text(pair)
        with_it = steering.prompt_text(tok, pair.prompt, use_chat_template=chat) + lead_text(pair)
        plain.append((with_start_token(tok, tok(without, add_special_tokens=not chat)["input_ids"]), answers))
        instructed.append((tok(with_it, add_special_tokens=not chat)["input_ids"], answers))
    base = record_activations(
        lm, plain, layers, batch_size=config.batch_size, batch_tokens=config.batch_tokens, progress=progress
    )
    shifted = record_activations(
        lm, instructed, layers, batch_size=config.batch_size, batch_tokens=config.batch_tokens, progress=progress
    )
    diff = (shifted - base).mean(dim=(0, 1))  # [n_layers, hidden]
    meta = VectorMeta.for_model(
        lm,
        "vector_prompt",
        config=asdict(replace(config, layers=layers)),
        dataset=data.describe(),
        task=task,
        residual_norms=norms_metadata(lm, layers),
    )
    return SteeringVector({layer: diff[i] for i, layer in enumerate(layers)}, meta)
