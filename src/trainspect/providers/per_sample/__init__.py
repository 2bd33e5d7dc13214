"""Per-sample gradient statistics: capture hooks, one fast path per layer type, a ``torch.func`` fallback.

The folder is a quantity × layer matrix: each layer type's file (``linear.py``, ``conv.py``,
``embedding.py``, ``norm.py``, ``fallback.py``) implements every quantity of :class:`.layer.LayerStatistics`
for that layer; ``provider.py`` combines them into the ``per_sample_grads`` provider.
"""

from trainspect.providers.per_sample.provider import (
    PerSampleGradients,
    PerSampleLayerProvider,
    PerSampleLayers,
    PerSampleLosses,
    project_per_sample,
    requested_quantities,
)
from trainspect.providers.per_sample.stats import GradientElementSample, PerSampleGradStats

__all__ = [
    "GradientElementSample",
    "PerSampleGradStats",
    "PerSampleGradients",
    "PerSampleLayerProvider",
    "PerSampleLayers",
    "PerSampleLosses",
    "project_per_sample",
    "requested_quantities",
]
