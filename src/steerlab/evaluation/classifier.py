"""A local Hugging Face sequence-classification folder used as a text scorer (sentiment, toxicity, ...)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import MissingFileError, UsageError


class LocalTextClassifier:
    """Class probabilities from a saved `AutoModelForSequenceClassification` folder; never reaches a hub."""

    def __init__(self, path: str | Path, device: str = "cpu", max_length: int = 512) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise MissingFileError(
                f"{folder} is not a Hugging Face model folder: it has no config.json "
                "(expected the output of save_pretrained for a sequence-classification model and its tokenizer)"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).to(device).eval()
        self.device = device
        self.max_length = max_length
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]

    def label_index(self, wanted: str | None, aliases: Sequence[str]) -> int:
        """Index of the label named `wanted`, else of the label whose name is one of `aliases` (any case).

        Exact names only: a substring rule would take "non-toxic" for "toxic".
        """
        if wanted is not None:
            if wanted not in self.labels:
                raise UsageError(f"label {wanted!r} not in the model's labels {self.labels}")
            return self.labels.index(wanted)
        lowered = [name.lower() for name in self.labels]
        for alias in aliases:
            if alias in lowered:
                return lowered.index(alias)
        raise UsageError(
            f"none of the labels {self.labels} is named one of {list(aliases)}; pass the label name explicitly"
        )

    @torch.inference_mode()
    def probabilities(self, texts: Sequence[str], batch_size: int = 32) -> list[list[float]]:
        """Class probabilities per text, in label order; batched so long lists fit in memory.

        Multi-label models (`problem_type == "multi_label_classification"`, e.g. toxic-bert) get an
        independent sigmoid per label, the others a softmax across labels.
        """
        multi_label = self.model.config.problem_type == "multi_label_classification"
        out: list[list[float]] = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            logits = self.model(**batch).logits.float()
            probs = torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)
            out.extend(probs.tolist())
        return out
