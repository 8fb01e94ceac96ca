"""A feature's decoder row as an ordinary steering vector (kind "vector", method "sae_feature").

The vector file is like any other: strength, calibration, sweeps, the server and the vLLM plugin take it
unchanged. Its metadata records the SAE, the feature, the sign (+1: the positive side of the pairs fires
the feature more) and the ranking's evidence; residual norms are measured as for every vector method.
"""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from ..meta import VectorMeta
from ..models import LoadedModel
from ..strength import norms_metadata
from ..vector import SteeringVector
from .model import SAE


def feature_vector(
    lm: LoadedModel,
    sae: SAE,
    feature: int,
    *,
    sign: int = 1,
    source: str = "",
    stats: dict[str, Any] | None = None,
    task: str = "",
) -> SteeringVector:
    """sign x W_dec[feature] at the SAE's layer, with the SAE (`source`), feature and `stats` in the metadata."""
    sae.check_model(lm)
    if not 0 <= feature < sae.d_sae:
        raise UsageError(f"feature {feature} is out of range: the SAE has features 0..{sae.d_sae - 1}")
    if sign not in (1, -1):
        raise UsageError(f"sign must be 1 or -1, got {sign}")
    meta = VectorMeta.for_model(
        lm,
        "sae_feature",
        config={"sae": source, "feature": feature, "sign": sign, "layer": sae.layer},
        fit_stats=dict(stats or {}),
        residual_norms=norms_metadata(lm, [sae.layer]),
        task=task,
    )
    return SteeringVector({sae.layer: sign * sae.W_dec[feature].clone()}, meta)
