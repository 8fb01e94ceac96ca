"""steerlab: build steering vectors from contrastive examples, steer generation, compare with the original.

The public verbs, in the order of the data path: load_model, load_pairs, fit, load_steer, steer,
generate, evaluate, compare (see docs/architecture.md).

Every error steerlab raises on purpose derives from `SteerlabError` (each also keeps its builtin parent, e.g.
`VectorFileError` is a `ValueError`); all of them are exported here.
"""

from .ablation import DirectionalAblation
from .conditional import Condition, ConditionalSteering, fit_condition
from .config import ConfigError
from .data import ContrastiveDataset, ContrastivePair, DatasetError, load_pairs, pairs_from_texts
from .errors import MissingFileError, OutputExistsError, SteerlabError, UsageError
from .evaluation.ab import ABFormatError
from .evaluation.metric_registry import MetricError
from .evaluation.reasoning import ReasoningError
from .evaluation.run import Comparison, EvaluationError, compare, evaluate
from .evaluation.sweep import SweepError
from .evaluation.tasks import TaskError
from .generation import ENGINES, GenerationConfig, GenerationResult, generate
from .interop.vllm.errors import EngineUnavailable, SteeringNotApplied, SteerNotFound, VLLMIncompatible
from .interop.vllm.request import SteeringRequestError
from .meta import VectorFileError
from .methods import fit
from .methods.lm_steer import InsufficientMemoryError
from .models import LayerError, LoadedModel, ModelLoadError, load_model
from .positions import TemplateError
from .sae.formats import SAEFileError
from .steering import CombinedSteering, SpecSteering, SteeringError, SteeringHandle, SteeringSpec, steer
from .steers import load_steer
from .strength import StrengthError
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
    "GenerationConfig",
    "GenerationResult",
    "LoadedModel",
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
    # the error family: SteerlabError and every subclass
    "ABFormatError",
    "ConfigError",
    "DatasetError",
    "EngineUnavailable",
    "EvaluationError",
    "IncompatibleVectorError",
    "InsufficientMemoryError",
    "LayerError",
    "MetricError",
    "MissingFileError",
    "OutputExistsError",
    "SAEFileError",
    "ModelLoadError",
    "ReasoningError",
    "SteerNotFound",
    "SteeringError",
    "SteeringNotApplied",
    "SteeringRequestError",
    "SteerlabError",
    "StrengthError",
    "SweepError",
    "TaskError",
    "TemplateError",
    "UsageError",
    "VLLMIncompatible",
    "VectorFileError",
]
