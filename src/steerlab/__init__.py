"""steerlab: build steering vectors from contrastive examples, steer generation, compare with the original.

The public verbs, in the order of the data path: load_model, load_pairs, fit, load_steer, steer,
generate, evaluate, compare (see docs/architecture.md).
"""

from .ablation import DirectionalAblation
from .conditional import Condition, ConditionalSteering, fit_condition
from .data import ContrastiveDataset, ContrastivePair, DatasetError, load_pairs, pairs_from_texts
from .evaluation.run import Comparison, EvaluationError, compare, evaluate
from .generation import ENGINES, GenerationConfig, GenerationResult, generate
from .methods import fit
from .models import LoadedModel, ModelLoadError, load_model
from .steering import CombinedSteering, SpecSteering, SteeringError, SteeringHandle, SteeringSpec, steer
from .steers import load_steer
from .vector import IncompatibleVectorError, SteeringVector, VectorMeta
from .version import __version__


def _vllm_engine(lm: LoadedModel):
    """generate(engine="vllm"): this process's vLLM engine for `lm` (steerlab.interop.vllm, imported on use)."""
    from .interop.vllm.engine import engine_for

    return engine_for(lm)


ENGINES["vllm"] = _vllm_engine

__all__ = [
    "CombinedSteering",
    "Comparison",
    "Condition",
    "ConditionalSteering",
    "ContrastiveDataset",
    "DirectionalAblation",
    "ContrastivePair",
    "DatasetError",
    "EvaluationError",
    "GenerationConfig",
    "GenerationResult",
    "IncompatibleVectorError",
    "LoadedModel",
    "ModelLoadError",
    "SteeringError",
    "SteeringHandle",
    "SteeringSpec",
    "SteeringVector",
    "VectorMeta",
    "SpecSteering",
    "__version__",
    "compare",
    "evaluate",
    "fit",
    "fit_condition",
    "generate",
    "load_model",
    "load_pairs",
    "load_steer",
    "pairs_from_texts",
    "steer",
]
