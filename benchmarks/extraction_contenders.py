"""The CAA extraction contenders, each reading the same tokens at the same position:
steerlab, steering-vectors, a per-example loop (two full forward passes per pair, as EasyEdit2 does),
and the limit (one bare batched forward pass, stopped after the deepest layer needed).
repeng runs in its own interpreter (benchmarks/repeng_worker.py).
"""

from __future__ import annotations

import contextlib

import torch

from steerlab.activations import tokenize_pair
from steerlab.batching import pad, positions_from_mask, token_batches
from steerlab.data import ContrastiveDataset, format_prompt
from steerlab.methods.caa import CAAConfig, fit
from steerlab.models import LoadedModel


class _Stop(Exception):
    pass


def pair_texts(lm: LoadedModel, data: ContrastiveDataset) -> list[tuple[str, str]]:
    """(positive, negative) full texts as string-based peers take them; they tokenize to steerlab's exact ids."""
    texts = []
    for pair in data.pairs:
        prompt = (
            format_prompt(lm.tokenizer, pair.prompt, use_chat_template=bool(lm.use_chat_template)) + pair.answer_prefix
        )
        prefix, pos, neg = tokenize_pair(lm, pair)
        for answer, ids in ((pair.positive, pos), (pair.negative, neg)):
            if lm.tokenizer(prompt + answer, add_special_tokens=True)["input_ids"] != prefix + ids:
                raise ValueError(f"the peers would read different tokens for {prompt[-40:] + answer!r}")
        if len(pos) != 1 or len(neg) != 1:
            raise ValueError("the peers read the last token only; use single-token answers (A/B items)")
        texts.append((prompt + pair.positive, prompt + pair.negative))
    return texts


def steerlab_fit(
    lm: LoadedModel, data: ContrastiveDataset, layers: list[int], batch_size: int
) -> dict[int, torch.Tensor]:
    return fit(lm, data, CAAConfig(layers=layers, batch_size=batch_size)).directions


def steering_vectors_fit(
    lm: LoadedModel, texts: list[tuple[str, str]], layers: list[int], batch_size: int
) -> dict[int, torch.Tensor]:
    from steering_vectors import train_steering_vector
    from steering_vectors.aggregators import mean_aggregator

    vector = train_steering_vector(
        lm.model,
        lm.tokenizer,
        texts,
        layers=layers,
        batch_size=batch_size,
        aggregator=mean_aggregator(),
        read_token_index=-1,
        move_to_cpu=True,
    )
    return dict(vector.layer_activations)


@torch.inference_mode()
def per_example_fit(lm: LoadedModel, data: ContrastiveDataset, layers: list[int]) -> dict[int, torch.Tensor]:
    """One pair at a time, each side a separate full forward with all hidden states (EasyEdit2's loop)."""
    sums = {layer: torch.zeros(lm.hidden_size) for layer in layers}
    for pair in data.pairs:
        prefix, pos, neg = tokenize_pair(lm, pair)
        for answer, sign in ((pos, 1.0), (neg, -1.0)):
            out = lm.model(torch.tensor([prefix + answer], device=lm.device), output_hidden_states=True)
            for layer in layers:
                sums[layer] += sign * out.hidden_states[layer + 1][0, -len(answer) :].float().mean(0).cpu()
    return {layer: s / len(data.pairs) for layer, s in sums.items()}


@torch.inference_mode()
def truncated_forward(lm: LoadedModel, data: ContrastiveDataset, deepest: int, batch_size: int) -> None:
    """The floor for reading both sides separately: every full sequence, batched as steerlab batches pairs
    (length-sorted, at most batch_size pairs = 2 * batch_size rows, little padding), one bare forward per batch
    stopped after block `deepest`, nothing read."""
    seqs = []
    for pair in data.pairs:
        prefix, pos, neg = tokenize_pair(lm, pair)
        seqs.append((prefix + pos, prefix + neg))

    def stop(module, args, output):
        raise _Stop

    handle = lm.layers[deepest].register_forward_hook(stop)
    try:
        for idx in token_batches([max(len(s) for s in pair) for pair in seqs], max_rows=batch_size):
            ids, mask = pad([s for i in idx for s in seqs[i]], lm.tokenizer.pad_token_id, left=True)
            with contextlib.suppress(_Stop):
                lm.model(
                    input_ids=ids.to(lm.device),
                    attention_mask=mask.to(lm.device),
                    position_ids=positions_from_mask(mask).to(lm.device),
                    use_cache=False,
                )
        if lm.device.type == "cuda":
            torch.cuda.synchronize()
    finally:
        handle.remove()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0))
