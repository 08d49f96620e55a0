"""beats_hf: BEATs (Chen et al., 2022) for Hugging Face transformers.

Importing the package registers its configurations and models with the Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForAudioFrameClassification,
)

from . import _moved_modules
from .configuration_beats import BeatsConfig, BeatsRandomProjectionConfig, BeatsTokenizationConfig
from .feature_extraction_beats import BeatsFeatureExtractor
from .modeling_beats import (
    BeatsForAudioClassification,
    BeatsForAudioFrameClassification,
    BeatsForAudioTokenization,
    BeatsForMaskedAudioModeling,
    BeatsMaskedAudioModelingOutput,
    BeatsModel,
    BeatsModelOutput,
    BeatsPreTrainedModel,
    BeatsRandomProjectionForAudioTokenization,
    BeatsTokenizationOutput,
)

__version__ = "0.1.0"

_moved_modules.install()  # the training kit's old module paths (beats_hf.pretraining, ...) still import, with a warning

for _config in (BeatsConfig, BeatsTokenizationConfig, BeatsRandomProjectionConfig):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoFeatureExtractor.register(_config, BeatsFeatureExtractor, exist_ok=True)
AutoModel.register(BeatsConfig, BeatsModel, exist_ok=True)
AutoModel.register(BeatsTokenizationConfig, BeatsForAudioTokenization, exist_ok=True)
AutoModel.register(BeatsRandomProjectionConfig, BeatsRandomProjectionForAudioTokenization, exist_ok=True)
AutoModelForAudioClassification.register(BeatsConfig, BeatsForAudioClassification, exist_ok=True)
AutoModelForAudioFrameClassification.register(BeatsConfig, BeatsForAudioFrameClassification, exist_ok=True)

__all__ = [
    "BeatsConfig",
    "BeatsTokenizationConfig",
    "BeatsRandomProjectionConfig",
    "BeatsFeatureExtractor",
    "BeatsPreTrainedModel",
    "BeatsModel",
    "BeatsModelOutput",
    "BeatsForAudioClassification",
    "BeatsForAudioFrameClassification",
    "BeatsForMaskedAudioModeling",
    "BeatsMaskedAudioModelingOutput",
    "BeatsForAudioTokenization",
    "BeatsRandomProjectionForAudioTokenization",
    "BeatsTokenizationOutput",
    "__version__",
]
