"""LM-Steer's training settings: one typed config, validated on creation."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import UsageError


@dataclass
class LMSteerConfig:
    """LM-Steer training settings, documented in configs/lm_steer.yaml (rank, epsilon, init_var as in the paper's code).

    rank: columns of P1 and P2; num_steers: independent steers, one training set each; epsilon: scale of
    the steer's change to h; init_var: standard deviation of P1/P2's random start; lr: Adam learning rate;
    steps: optimiser steps; batch_size: texts per step; max_length: tokens per text (longer ones are cut);
    chunk_size: tokens whose logits exist at once (bounds the [tokens, vocab] logits and their gradient);
    cache_hidden_states: run each text through the frozen model once and keep its final hidden states
    (fast when steps * batch_size exceeds the number of texts) instead of once per step; max_memory_gb:
    cap on the memory training may use (None = what the device has free); seed: init and batch order.
    """

    rank: int = 1000
    num_steers: int = 1
    epsilon: float = 1e-3
    init_var: float = 1e-2
    lr: float = 1e-2
    steps: int = 1000
    batch_size: int = 32
    max_length: int = 256
    chunk_size: int = 2048
    cache_hidden_states: bool = True
    max_memory_gb: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("rank", "num_steers", "steps", "batch_size", "chunk_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_length < 2:
            raise UsageError(
                f"max_length must be at least 2 (a context token and a predicted one), got {self.max_length}"
            )
        for name in ("epsilon", "init_var", "lr"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_memory_gb is not None and not self.max_memory_gb > 0:
            raise UsageError(f"max_memory_gb must be positive (or null for no cap), got {self.max_memory_gb}")
