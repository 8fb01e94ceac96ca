"""Run under the repeng interpreter (STEERLAB_REPENG_PYTHON): repeng needs numpy<2, steerlab's venv has numpy 2.

python repeng_bridge.py export IN.npz MODEL_TYPE OUT.gguf   # arrays layer_N -> ControlVector.export_gguf
python repeng_bridge.py import IN.gguf OUT.npz              # ControlVector.import_gguf -> arrays layer_N
"""

import sys

import numpy as np
from repeng import ControlVector


def export(npz_path: str, model_type: str, gguf_path: str) -> None:
    with np.load(npz_path) as arrays:
        directions = {int(key.split("_")[1]): arrays[key].astype(np.float32) for key in arrays.files}
    ControlVector(model_type=model_type, directions=directions).export_gguf(gguf_path)


def import_(gguf_path: str, npz_path: str) -> None:
    vector = ControlVector.import_gguf(gguf_path)
    arrays = {f"layer_{layer}": np.array(d, dtype=np.float32) for layer, d in vector.directions.items()}
    np.savez(npz_path, model_type=np.array(vector.model_type), **arrays)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"export": export, "import": import_}[command](*args)
