"""repeng's ControlVector.train as a benchmark contender, in repeng's own interpreter (it needs numpy < 2).

    python benchmarks/repeng_worker.py MODEL_FOLDER PAIRS_JSON THREADS

Loads the model once, then answers {"op": "train", "layers": [...], "batch_size": n, "limit": k} lines
with the seconds ControlVector.train took (model loading excluded) and its directions' norms.
"""

from __future__ import annotations

import json
import sys
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from common import serve
from repeng import ControlVector, DatasetEntry
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(folder: str, pairs_json: str, threads: str) -> None:
    torch.set_num_threads(int(threads))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    pairs = json.loads(Path(pairs_json).read_text())
    dataset = [DatasetEntry(positive=p, negative=n) for p, n in pairs]

    def train(layers: list[int], batch_size: int, limit: int | None = None) -> dict:
        start = time.perf_counter()
        # repeng's batch counts strings, positive and negative interleaved: 2 * pairs per batch.
        vector = ControlVector.train(model, tokenizer, dataset[:limit], hidden_layers=layers, batch_size=2 * batch_size)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "layers": sorted(vector.directions)}

    serve(
        {"train": train},
        {
            "ready": True,
            "repeng": metadata.version("repeng"),
            "numpy": metadata.version("numpy"),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
