"""steerlab: build steering vectors from contrastive examples, steer generation, compare with the original."""

__version__ = "0.1.0"

from .data import ContrastiveDataset, ContrastivePair, DatasetError, load_pairs, pairs_from_texts  # noqa: E402
from .generation import GenerationConfig, GenerationResult, generate  # noqa: E402
from .models import LoadedModel, ModelLoadError, load_model  # noqa: E402
from .steering import SteeringError, SteeringHandle, SteeringSpec, VectorSteering, steer  # noqa: E402
from .vector import IncompatibleVectorError, SteeringVector, VectorMeta  # noqa: E402

__all__ = [
    "ContrastiveDataset", "ContrastivePair", "DatasetError", "GenerationConfig", "GenerationResult",
    "IncompatibleVectorError", "LoadedModel", "ModelLoadError", "SteeringError", "SteeringHandle",
    "SteeringSpec", "SteeringVector", "VectorMeta", "VectorSteering", "generate", "load_model",
    "load_pairs", "pairs_from_texts", "steer",
]
