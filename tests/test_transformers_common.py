"""transformers' own shared tests, run on the BEATs classes.

What runs, from the transformers source distribution of the installed version (its `tests/` folder):
- `ModelTesterMixin` (test_modeling_common.py) on every public model class, in five test classes because the classes
  take different configs or inputs: the encoder and its two classification heads; the two heads again with
  `use_weighted_layer_sum=True` (their hidden states take another path); masked audio modeling (it takes
  `bool_masked_pos`); the acoustic tokenizer; the random-projection tokenizer. Each also runs `ConfigTester`
  (test_configuration_common.py) on its configuration.
- `SequenceFeatureExtractionTestMixin` (test_sequence_feature_extraction_common.py) on `BeatsFeatureExtractor`.
- `PipelineTesterMixin` (test_pipeline_mixin.py) for the audio-classification pipeline.

Where the files come from: `make test` (see the README) downloads the sdist with pip
(`pip download --no-deps --no-binary :all: transformers==<installed version>`) into `.cache/transformers-src/` and
unpacks its `tests/` folder there. Without that folder, or without `parameterized` (test_modeling_common.py imports
it), this module is skipped with the reason, so `pytest tests` alone still works. Nothing here reaches the network.

The sdist ships the `*_common.py` and `*_mixin.py` files of `tests/` but not the packages they import. How each
missing file is handled (`_load_shared_tests` does all of it):
- `tests/__init__.py`: written empty (the repository's is empty): test_configuration_common.py runs
  `direct_transformers_import` on its own folder, which executes that file.
- `tests/exporters/test_export.py` (`ExportTesterMixin`, the base class of `ModelTesterMixin`): an empty stand-in, so
  the torch.export tests do not exist here. `tests/generation/test_utils.py` (`GenerationTesterMixin`): an empty
  stand-in; no BEATs class generates.
- `tests/utils/test_configuration_utils.py` (`config_common_kwargs`): our own dict of non-default values for the
  attributes every `PreTrainedConfig` has (`COMMON_CONFIG_KWARGS` below).
- `tests/utils/tiny_model_summary.json` and `tests/pipelines/test_pipelines_audio_classification.py`: the pipeline
  mixin loads tiny models from the Hub (`hf-internal-testing/tiny-random-<class>`) and hands them to a per-task test
  class from that file. Here `TRANSFORMERS_TINY_MODEL_PATH` (the mixin's own switch for local tiny models) points at
  `.cache/transformers-src/tiny-models/`, with a summary naming `BeatsForAudioClassification` and
  `BeatsFeatureExtractor`; the pipeline test saves the tiny model there first, and `AudioClassificationPipelineChecks`
  below (our own, for BEATs) is the per-task class. The mixin also executes the sdist's `src/transformers/__init__.py`
  to look classes up by name; it gets the installed transformers (the same version) instead, with beats_hf's classes
  visible in it, so no second copy of transformers is imported.

Every test that does not run is listed below with its reason: `SKIPPED` (we skip it), `EXPECTED_FAILURES` (none) and
`SKIPPED_BY_THE_SHARED_TESTS` (the shared test skips itself for a feature BEATs does not have, a task it does not serve,
...). A shared test that skips itself because this machine lacks hardware (an accelerator, several GPUs, MPS) or a
library that is not installed is accepted by that reason, whatever its name (`_missing_on_this_machine`), so a new
GPU-only test upstream does not fail here. Any other skip fails, naming the test and its reason (`_documented`). Where a shared test is adapted rather than skipped, the test class
says so next to the override.
"""

import contextlib
import copy
import functools
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
import types
import unittest
import warnings
from unittest import TestCase, mock

import numpy as np
import pytest
import torch
import transformers
from conftest import REPO_ROOT
from transformers import PreTrainedModel, pipeline
from transformers.utils import ModelOutput

import beats_hf
from beats_hf import (
    BeatsConfig,
    BeatsFeatureExtractor,
    BeatsForAudioClassification,
    BeatsForAudioFrameClassification,
    BeatsForAudioTokenization,
    BeatsForMaskedAudioModeling,
    BeatsModel,
    BeatsRandomProjectionConfig,
    BeatsRandomProjectionForAudioTokenization,
    BeatsTokenizationConfig,
)

SOURCE_FOLDER = REPO_ROOT / ".cache" / "transformers-src"
SHARED_TESTS = SOURCE_FOLDER / f"transformers-{transformers.__version__}" / "tests"
TINY_MODELS = SOURCE_FOLDER / "tiny-models"
PACKAGE = "transformers_shared_tests"

if not (SHARED_TESTS / "test_modeling_common.py").exists():
    pytest.skip(
        f"transformers' shared tests are not in {SHARED_TESTS}: `make test` downloads them (the transformers "
        f"{transformers.__version__} sdist, with pip)",
        allow_module_level=True,
    )
pytest.importorskip("parameterized", reason="test_modeling_common.py needs `parameterized` (`make test` installs it)")

# Non-default values for the attributes every PreTrainedConfig has: ConfigTester.check_config_arguments_init passes
# them to each config class and checks that each one is kept.
COMMON_CONFIG_KWARGS = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["BeatsModel"],
    "id2label": {0: "speech", 1: "music"},
    "label2id": {"speech": 0, "music": 1},
    "problem_type": "single_label_classification",
}


class _TransformersWithBeats(types.ModuleType):
    """The installed transformers, with beats_hf's public classes also visible by name."""

    def __getattr__(self, name):
        return getattr(beats_hf if name in beats_hf.__all__ else transformers, name)


def _stand_in(name: str, **attributes) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module


def _load_shared_tests() -> dict[str, types.ModuleType]:
    """Imports the shared test files of the sdist as the package `transformers_shared_tests`, with stand-ins for the
    files the release lacks (see the module docstring)."""
    init_file = SHARED_TESTS / "__init__.py"
    if not init_file.exists():
        init_file.write_text("")
    spec = importlib.util.spec_from_file_location(PACKAGE, init_file, submodule_search_locations=[str(SHARED_TESTS)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    spec.loader.exec_module(package)

    class ExportTesterMixin:
        """Stand-in: tests/exporters/ is not in the sdist."""

    class GenerationTesterMixin:
        """Stand-in: tests/generation/ is not in the sdist."""

    for sub_package in ("exporters", "generation", "utils"):
        _stand_in(f"{PACKAGE}.{sub_package}", __path__=[])
    _stand_in(f"{PACKAGE}.exporters.test_export", ExportTesterMixin=ExportTesterMixin)
    _stand_in(f"{PACKAGE}.generation.test_utils", GenerationTesterMixin=GenerationTesterMixin)
    _stand_in(f"{PACKAGE}.utils.test_configuration_utils", config_common_kwargs=COMMON_CONFIG_KWARGS)

    modules = {}
    for name in ("test_modeling_common", "test_configuration_common", "test_sequence_feature_extraction_common"):
        modules[name] = importlib.import_module(f"{PACKAGE}.{name}")

    # The pipeline mixin reads its tiny-model summary and the transformers namespace when it is imported.
    (TINY_MODELS / "reports").mkdir(parents=True, exist_ok=True)
    model = {"tokenizer_classes": [], "processor_classes": ["BeatsFeatureExtractor"]}
    summary = {"BeatsForAudioClassification": model}
    (TINY_MODELS / "reports" / "tiny_model_summary.json").write_text(json.dumps(summary))
    with mock.patch.dict(os.environ, {"TRANSFORMERS_TINY_MODEL_PATH": str(TINY_MODELS)}):
        with mock.patch.object(transformers.utils, "direct_transformers_import", lambda *_: _TransformersWithBeats(
            "transformers"
        )):
            modules["test_pipeline_mixin"] = importlib.import_module(f"{PACKAGE}.test_pipeline_mixin")
    return modules


with warnings.catch_warnings():
    # The shared tests carry the pytest markers of transformers' own CI (flash_attn_test, torch_compile_test, ...).
    warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
    _SHARED = _load_shared_tests()
_MODELING = _SHARED["test_modeling_common"]
ModelTesterMixin = _MODELING.ModelTesterMixin
ConfigTester = _SHARED["test_configuration_common"].ConfigTester
_FEATURE_EXTRACTION = _SHARED["test_sequence_feature_extraction_common"]
SequenceFeatureExtractionTestMixin = _FEATURE_EXTRACTION.SequenceFeatureExtractionTestMixin
PipelineTesterMixin = _SHARED["test_pipeline_mixin"].PipelineTesterMixin


# ---------------------------------------------------------------------------------------------------------------------
# The documented list: every test that does not run, and why
# ---------------------------------------------------------------------------------------------------------------------

# Keys are test names; `Class.test_name` limits a row to one test class; a trailing `*` matches the cases of a
# parameterized test.
_TOKENIZERS = ("BeatsForAudioTokenizationTest", "BeatsRandomProjectionForAudioTokenizationTest")

SKIPPED = {
    "The tokenizers return codes (`BeatsTokenizationOutput`: token ids, patch mask, codes, embeddings), by design "
    "never hidden states or attentions; the encoder inside the acoustic tokenizer is a BeatsModel, which "
    "BeatsModelTest covers": [
        f"{test_class}.{name}"
        for test_class in _TOKENIZERS
        for name in ("test_hidden_states_output", "test_retain_grad_hidden_states_attentions")
    ],
    "The random-projection tokenizer has no input embedding layer: its patches are multiplied by a frozen random "
    "matrix (a parameter, not a module)": [
        "BeatsRandomProjectionForAudioTokenizationTest.test_model_get_set_embeddings"
    ],
}

EXPECTED_FAILURES: dict[str, list[str]] = {}  # none

_OTHER_PIPELINE_TASKS = (
    "any_to_any", "automatic_speech_recognition", "depth_estimation", "document_question_answering",
    "feature_extraction", "fill_mask", "image_classification", "image_feature_extraction", "image_segmentation",
    "image_text_to_text", "mask_generation", "object_detection", "table_question_answering", "text_classification",
    "text_generation", "text_to_audio", "token_classification", "video_classification", "zero_shot",
    "zero_shot_audio_classification", "zero_shot_image_classification", "zero_shot_object_detection",
)  # fmt: skip

# Skips accepted by their reason, whatever the test's name, so that a new hardware test upstream does not fail here:
# transformers' `require_*` decorators skip with "test requires accelerator", "... multiple CUDA GPUs", "... MPS",
# "... deepspeed", ... A library reason is accepted only while that library really is missing here.
_MISSING_HARDWARE = re.compile(r"^test requires .*\b(accelerators?|GPUs?|CUDA|ROCm|XPUs?|NPUs?|HPUs?|MPS|TPUs?)\b")
_MISSING_LIBRARY = re.compile(r"^test requires (?:the )?`?(?P<name>[A-Za-z][\w.-]*)`?(?: library)?$")


def _missing_on_this_machine(reason: str) -> bool:
    """Whether `reason` says the test needs hardware this machine lacks, or a library that is not installed."""
    if _MISSING_HARDWARE.search(reason):
        return True
    if not (match := _MISSING_LIBRARY.match(reason)):
        return False
    name = match["name"]
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution(name)
        return False
    return importlib.util.find_spec(name.lower().replace("-", "_")) is None


# Skips by name, for the shared tests' other reasons (features BEATs does not have, pipeline tasks it does not serve).
SKIPPED_BY_THE_SHARED_TESTS = {
    "Flash Attention 2/3/4 and the `kernels` library: not installed, and BEATs declares "
    "`_supports_flash_attn = False` (its gated relative position bias is a float attention mask, which flash kernels "
    "do not take)": [
        "test_flash_attn_*", "test_kernels_can_load_without_crashing",
    ],
    "Marked slow in transformers (and it needs a GPU); tests/test_compile.py compiles BEATs on CPU": [
        "test_torch_compile_for_training",
    ],
    "BEATs reads fbank patches: there is no vocabulary, no `inputs_embeds` and no absolute position embedding to "
    "resize (`test_resize_embeddings = False`, as in AST's tests; DeepSpeed is not installed either)": [
        "test_inputs_embeds", "test_inputs_embeds_matches_input_ids", "test_resize_embeddings_untied*",
        "test_resize_tokens_embeddings*", "test_resize_position_vector_embeddings",
    ],
    "Features BEATs does not have: rotary embeddings, mixture of experts, a KV cache, a language-modeling head, "
    "sub-configs, sliding-window attention, a tensor-parallel plan, modules kept in float32 by declaration (its "
    "float32 work happens inside forward), key renamings registered in transformers' conversion mapping (the "
    "official checkpoints are converted by conversion/)": [
        "test_model_rope_*", "test_vision_axial_rope", "test_moe_models_record_router_logits",
        "test_output_router_logits_from_config", "test_eager_matches_batched_and_grouped_inference*",
        "test_bc_cache_name_forward", "test_causal_lm_loss_honors_shift_labels",
        "test_encoder_decoder_loss_no_double_shift", "test_attn_implementation_composite_models",
        "test_can_set_attention_dynamically_composite_model", "test_sdpa_can_dispatch_composite_models",
        "test_internal_model_config_and_subconfig_are_same", "test_sliding_window_mask", "test_tp_plan_matches_params",
        "test_keep_in_fp32_modules*", "test_can_load_from_already_mapped_keys", "test_reverse_loading_mapping",
    ],
    "The tokenizers have no attention outputs by design (`has_attentions = False`); the random-projection tokenizer "
    "has no encoder at all (no attention, no recorded outputs)": [
        f"{test_class}.{name}"
        for test_class in _TOKENIZERS
        for name in (
            "test_attention_outputs", "test_multimodal_outputs_are_returned", "test_eager_matches_sdpa_inference*",
            "test_sdpa_can_dispatch_non_composite_models", "test_can_capture_specific_layers_hidden_states",
        )
    ] + [
        "BeatsRandomProjectionForAudioTokenizationTest.test_capture_outputs_decorator",
        "BeatsRandomProjectionForAudioTokenizationTest.test_can_set_attention_dynamically",
    ],
    "The tokenizers do not train through a loss of their own: the random-projection tokenizer is frozen "
    "(`is_training = False`), the acoustic tokenizer is trained by the distillation model in beats_hf.training.pretraining": [
        "BeatsRandomProjectionForAudioTokenizationTest.test_training*",
        f"{_TOKENIZERS[1]}.test_enable_input_require_grads_with_gradient_checkpointing",
        f"{_TOKENIZERS[0]}.test_enable_input_require_grads_with_gradient_checkpointing",
    ],
    "BEATs serves one pipeline task, audio-classification (`pipeline_model_mapping`); the mixin skips the others, "
    "as not in that mapping or for a library they need (timm, av, pytesseract)": [
        f"test_pipeline_{task}{suffix}" for task in _OTHER_PIPELINE_TASKS for suffix in ("", "_fp16")
    ],
}


def _reason(table: dict[str, list[str]], class_name: str, test_name: str) -> str | None:
    for reason, keys in table.items():
        for key in keys:
            owner, _, pattern = key.rpartition(".")
            if owner and owner != class_name:
                continue
            if test_name == pattern or (pattern.endswith("*") and test_name.startswith(pattern[:-1])):
                return reason
    return None


def _documented(test_class: type) -> type:
    """Applies `SKIPPED` and `EXPECTED_FAILURES` to `test_class`, and makes every other skip a failure unless
    `SKIPPED_BY_THE_SHARED_TESTS` lists it or its reason is something this machine lacks."""
    for name in dir(test_class):
        test = getattr(test_class, name)
        if not name.startswith("test_") or not callable(test):
            continue
        if reason := _reason(SKIPPED, test_class.__name__, name):
            setattr(test_class, name, unittest.skip(reason)(test))
            continue
        expected_failure = _reason(EXPECTED_FAILURES, test_class.__name__, name) is not None
        allowed_skip = _reason(SKIPPED_BY_THE_SHARED_TESTS, test_class.__name__, name) is not None
        if getattr(test, "__unittest_skip__", False):
            if not (allowed_skip or _missing_on_this_machine(test.__unittest_skip_why__)):
                test = _unlisted_skip(name, test.__unittest_skip_why__)
        setattr(test_class, name, _guarded(test, name, allowed_skip, expected_failure))
    return test_class


def _unlisted_skip(name: str, why: str):
    def test(self):
        self.fail(f"{name} is skipped ({why}) but not listed in this file")

    return test


def _guarded(test, name: str, allowed_skip: bool, expected_failure: bool):
    @functools.wraps(test)
    def guarded(self, *args, **kwargs):
        try:
            return test(self, *args, **kwargs)
        except unittest.SkipTest as skip:
            if allowed_skip or _missing_on_this_machine(str(skip)):
                raise
            self.fail(f"{name} skipped itself ({skip}) but is not listed in this file")

    if expected_failure:
        guarded = unittest.expectedFailure(guarded)
    return guarded


# ---------------------------------------------------------------------------------------------------------------------
# Model tests
# ---------------------------------------------------------------------------------------------------------------------


class BeatsModelTester:
    """Tiny BEATs configs and inputs: 32 mel bins (2 frequency patches per row of 16 frames), 48 frames (3 rows, 6
    patches), 2 layers of width 32 with 4 heads, batch of 3. The last clip is padded (32 valid frames), so every shared
    test also goes through the attention mask."""

    def __init__(self, parent, config_class=BeatsConfig, mask_patches=False, is_training=True, **config_overrides):
        self.parent = parent
        self.config_class = config_class
        self.mask_patches = mask_patches
        self.is_training = is_training
        self.config_overrides = config_overrides
        self.batch_size = 3
        self.num_frames = 48
        self.num_mel_bins = 32
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.num_labels = 3
        self.codebook_size = 16
        self.lengths = [48, 48, 32]
        self.bands = self.num_mel_bins // 16
        self.num_patches = self.num_frames // 16 * self.bands
        # With `mask_patches`, every clip has its first band masked: the encoder keeps half the patches.
        self.seq_length = self.num_patches // 2 if mask_patches else self.num_patches
        # For the shared tests that build their own `bool_masked_pos` (for every forward that takes it): the first
        # `num_masks` of `mask_length` patches.
        self.mask_length = self.num_patches
        self.num_masks = 2

    def get_config(self):
        if self.config_class is BeatsRandomProjectionConfig:
            return BeatsRandomProjectionConfig(num_mel_bins=self.num_mel_bins, codebook_size=self.codebook_size,
                                               codebook_dim=8)
        kwargs = dict(
            num_mel_bins=self.num_mel_bins, patch_embedding_dim=24, hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
            intermediate_size=37, num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=4, num_buckets=8,
            max_bucket_distance=16, layerdrop=0.0, num_labels=self.num_labels, num_target_codes=self.codebook_size,
            predictor_num_layers=1,
        )  # fmt: skip
        if self.config_class is BeatsTokenizationConfig:
            kwargs.update(codebook_size=self.codebook_size, codebook_dim=8, estimator_num_layers=1)
        return self.config_class(**{**kwargs, **self.config_overrides})

    def prepare_config_and_inputs_for_common(self):
        features = torch.randn(self.batch_size, self.num_frames, self.num_mel_bins)
        attention_mask = torch.zeros(self.batch_size, self.num_frames, dtype=torch.long)
        for index, length in enumerate(self.lengths):
            attention_mask[index, :length] = 1
            features[index, length:] = 0.0
        inputs = {"input_features": features, "attention_mask": attention_mask}
        if self.mask_patches:
            bool_masked_pos = torch.zeros(self.batch_size, self.num_patches, dtype=torch.bool)
            bool_masked_pos.view(self.batch_size, -1, self.bands)[..., 0] = True
            inputs["bool_masked_pos"] = bool_masked_pos
        return self.get_config(), inputs

    def labels_for(self, model_class) -> torch.Tensor | None:
        """Fixed labels (a test may build the inputs twice and compare the outputs) for the heads transformers does
        not know."""
        if model_class is BeatsForAudioFrameClassification:
            return torch.arange(self.batch_size * (self.num_frames // 16)).view(self.batch_size, -1) % self.num_labels
        if model_class is BeatsForMaskedAudioModeling:
            return torch.arange(self.batch_size * self.num_patches).view(self.batch_size, -1) % self.codebook_size
        return None


# The shared tests tell base models from task heads by looking class names up in transformers' Auto mapping tables,
# where a model outside the library is not. While our tests run, the test module's copies of those tables also hold
# what beats_hf/__init__.py registers with the Auto classes (transformers' own tables are not touched).
_AUTO_NAMES = {
    "MODEL_MAPPING_NAMES": {
        "beats_hf": "BeatsModel",
        "beats_hf_tokenization": "BeatsForAudioTokenization",
        "beats_hf_random_projection": "BeatsRandomProjectionForAudioTokenization",
    },
    "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES": {"beats_hf": "BeatsForAudioClassification"},
}

# ConfigTester builds configs from these alone (and checks that they survive JSON and save/load).
TINY_CONFIG_TESTER_KWARGS = {"hidden_size": 32, "num_attention_heads": 4, "num_conv_pos_embedding_groups": 4}


def _bools_as_integers(value):
    if isinstance(value, torch.Tensor) and value.dtype == torch.bool:
        return value.long()
    if isinstance(value, ModelOutput):  # in place, to keep the order of its items (the order of `to_tuple()`)
        for key in list(value.keys()):
            value[key] = _bools_as_integers(value[key])
        return value
    if isinstance(value, tuple):
        return tuple(_bools_as_integers(item) for item in value)
    return value


@contextlib.contextmanager
def _outermost_bool_outputs_as_integers():
    """While it is active, the outermost model call returns its bool tensors as 0/1 int64 (inner calls, such as a
    head's call of its encoder, are untouched)."""
    depth = 0

    def before(module, args):
        nonlocal depth
        depth += isinstance(module, PreTrainedModel)

    def after(module, args, output):
        nonlocal depth
        if isinstance(module, PreTrainedModel):
            depth -= 1
            if depth == 0:
                return _bools_as_integers(output)
        return None

    handles = [
        torch.nn.modules.module.register_module_forward_pre_hook(before),
        torch.nn.modules.module.register_module_forward_hook(after),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class _BeatsModelTestBase(ModelTesterMixin):
    """What the BEATs model test classes share: the Auto names above, labels for our heads, the config tester."""

    tester_kwargs: dict = {}
    config_tester_kwargs: dict = {}
    test_resize_embeddings = False
    # Our configuration file has no "# Copyright <year>" line, from which the shared test dates a model to decide
    # whether to run: run it.
    test_can_init_all_missing_weights_before_2023 = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        for name, entries in _AUTO_NAMES.items():
            patcher = mock.patch.object(_MODELING, name, {**getattr(_MODELING, name), **entries})
            patcher.start()
            cls.addClassCleanup(patcher.stop)

    def setUp(self):
        self.model_tester = BeatsModelTester(self, **self.tester_kwargs)
        self.config_tester = ConfigTester(
            self, config_class=self.model_tester.config_class, has_text_modality=False, **self.config_tester_kwargs
        )

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and "labels" not in inputs_dict:
            labels = self.model_tester.labels_for(model_class)
            if labels is not None:
                inputs_dict["labels"] = labels
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model_get_set_embeddings(self):
        # Replaces the shared test, which expects an nn.Embedding: BEATs's input embedding is the patch convolution
        # (AST's tests replace it in the same way).
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(copy.deepcopy(config))
            self.assertIs(model.get_input_embeddings(), model.base_model.patch_embeddings.projection)
            self.assertIsInstance(model.get_input_embeddings(), torch.nn.Conv2d)
            self.assertIsNone(model.get_output_embeddings())

    def test_model_outputs_equivalence(self):
        # Runs the shared test with the outputs' bool tensors (`patch_mask`) as 0/1 integers: it formats its failure
        # message with `tuple_output - dict_output` before it knows whether there is a failure, and torch refuses `-`
        # on bool tensors. The values are still compared. `patch_mask` stays bool in BEATs's outputs: `~`, indexing
        # and `masked_fill` need a bool mask, and a 0/1 integer mask would make `~mask` silently -1/-2.
        with _outermost_bool_outputs_as_integers():
            super().test_model_outputs_equivalence()


@_documented
class BeatsModelTest(_BeatsModelTestBase, PipelineTesterMixin, unittest.TestCase):
    all_model_classes = (BeatsModel, BeatsForAudioClassification, BeatsForAudioFrameClassification)
    pipeline_model_mapping = {"audio-classification": BeatsForAudioClassification}
    config_tester_kwargs = TINY_CONFIG_TESTER_KWARGS

    def _save_tiny_pipeline_model(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        folder = TINY_MODELS / "beats_hf" / "BeatsForAudioClassification"
        BeatsForAudioClassification(config).save_pretrained(folder)
        BeatsFeatureExtractor(feature_size=self.model_tester.num_mel_bins).save_pretrained(folder)

    def test_pipeline_audio_classification(self):
        # The mixin loads the tiny model from TINY_MODELS (see the module docstring): save it there first.
        self._save_tiny_pipeline_model()
        with self._pipeline_checks():
            super().test_pipeline_audio_classification()

    def test_pipeline_audio_classification_fp16(self):
        self._save_tiny_pipeline_model()
        with self._pipeline_checks():
            super().test_pipeline_audio_classification_fp16()

    @staticmethod
    def _pipeline_checks():
        # The mixin resolves the per-task test class from a dotted path; ours stands in for the file the sdist lacks.
        mapping = _SHARED["test_pipeline_mixin"].pipeline_test_mapping
        path = f"{__name__}.AudioClassificationPipelineChecks"
        return mock.patch.dict(mapping, {"audio-classification": {"test": path}})


@_documented
class BeatsWeightedLayerSumTest(_BeatsModelTestBase, unittest.TestCase):
    all_model_classes = (BeatsForAudioClassification, BeatsForAudioFrameClassification)
    tester_kwargs = {"use_weighted_layer_sum": True}
    config_tester_kwargs = {**TINY_CONFIG_TESTER_KWARGS, "use_weighted_layer_sum": True}


@_documented
class BeatsForMaskedAudioModelingTest(_BeatsModelTestBase, unittest.TestCase):
    all_model_classes = (BeatsForMaskedAudioModeling,)
    tester_kwargs = {"mask_patches": True}
    config_tester_kwargs = TINY_CONFIG_TESTER_KWARGS


@_documented
class BeatsForAudioTokenizationTest(_BeatsModelTestBase, unittest.TestCase):
    all_model_classes = (BeatsForAudioTokenization,)
    tester_kwargs = {"config_class": BeatsTokenizationConfig}
    config_tester_kwargs = {**TINY_CONFIG_TESTER_KWARGS, "codebook_size": 16}
    has_attentions = False


@_documented
class BeatsRandomProjectionForAudioTokenizationTest(_BeatsModelTestBase, unittest.TestCase):
    all_model_classes = (BeatsRandomProjectionForAudioTokenization,)
    tester_kwargs = {"config_class": BeatsRandomProjectionConfig, "is_training": False}
    config_tester_kwargs = {"codebook_size": 16, "common_properties": ["codebook_size", "codebook_dim"]}
    has_attentions = False


# ---------------------------------------------------------------------------------------------------------------------
# The audio-classification pipeline
# ---------------------------------------------------------------------------------------------------------------------


class AudioClassificationPipelineChecks:
    """Our per-task class for PipelineTesterMixin (tests/pipelines/ is not in the sdist). The mixin builds the model
    and feature extractor from the tiny-model folder, calls `get_test_pipeline`, then `run_pipeline_test`, then runs
    the pipeline over 10 examples in batches of 4."""

    def get_test_pipeline(self, model, tokenizer=None, feature_extractor=None, image_processor=None, processor=None,
                          dtype="float32"):
        classifier = pipeline("audio-classification", model=model, feature_extractor=feature_extractor, dtype=dtype)
        rng = np.random.default_rng(0)
        examples = [
            rng.uniform(-0.5, 0.5, 16000).astype(np.float32),  # 1 s
            {"raw": rng.uniform(-0.5, 0.5, 4000).astype(np.float32), "sampling_rate": 16000},  # 1 patch row and more
            {"array": rng.uniform(-0.5, 0.5, 2800).astype(np.float32), "sampling_rate": 16000},  # exactly 1 row
        ]
        return classifier, examples

    def run_pipeline_test(self, classifier, examples):
        labels = set(classifier.model.config.id2label.values())
        for example in examples:
            # `top_k` at call time: in transformers 5.24 a call without it returns every label, whatever the
            # pipeline was built with.
            predictions = classifier(example, top_k=2)
            assert len(predictions) == 2 and {p["label"] for p in predictions} <= labels
            assert predictions[0]["score"] >= predictions[1]["score"] > 0
        every_label = classifier(examples[0], top_k=None)
        assert {p["label"] for p in every_label} == labels
        assert abs(sum(p["score"] for p in every_label) - 1.0) < 1e-2  # softmax (single-label head)
        batched = classifier(examples, batch_size=2, top_k=None)
        one_by_one = [classifier(example, top_k=None) for example in examples]
        for batch_predictions, single_predictions in zip(batched, one_by_one):
            batch_scores = {p["label"]: p["score"] for p in batch_predictions}
            for prediction in single_predictions:  # padding in a batch changes nothing
                assert abs(batch_scores[prediction["label"]] - prediction["score"]) < 1e-4


# ---------------------------------------------------------------------------------------------------------------------
# The feature extractor
# ---------------------------------------------------------------------------------------------------------------------


class BeatsFeatureExtractionTester:
    """Inputs for the shared feature-extraction tests: the fbank of random clips, computed by BeatsFeatureExtractor
    itself, of 20, 30, ..., 80 frames (the padding tests need lengths growing by `seq_length_diff`)."""

    def __init__(self, parent, batch_size=7, min_seq_length=20, seq_length_diff=10, feature_size=128):
        self.parent = parent
        self.batch_size = batch_size
        self.min_seq_length = min_seq_length
        self.seq_length_diff = seq_length_diff
        self.max_seq_length = min_seq_length + (batch_size - 1) * seq_length_diff
        self.feature_size = feature_size

    def prepare_feat_extract_dict(self):
        return {"feature_size": self.feature_size, "sampling_rate": 16000, "padding_value": 0.0,
                "return_attention_mask": True}

    def prepare_inputs_for_common(self, equal_length=False, numpify=False):
        extractor = BeatsFeatureExtractor(**self.prepare_feat_extract_dict())
        rng = np.random.default_rng(0)
        if equal_length:
            frames = [self.max_seq_length] * self.batch_size
        else:
            frames = [self.min_seq_length + index * self.seq_length_diff for index in range(self.batch_size)]
        features = []
        for count in frames:
            audio = rng.uniform(-0.5, 0.5, extractor.frame_length + (count - 1) * extractor.hop_length)
            clip = extractor(audio.astype(np.float32), sampling_rate=16000, return_tensors="np")["input_features"][0]
            assert clip.shape == (count, self.feature_size)
            features.append(clip if numpify else clip.tolist())
        return features


@_documented
class BeatsFeatureExtractionTest(SequenceFeatureExtractionTestMixin, unittest.TestCase):
    feature_extraction_class = BeatsFeatureExtractor

    def setUp(self):
        self.feat_extract_tester = BeatsFeatureExtractionTester(self)


def test_every_listed_test_exists():
    """Each row of the lists above names tests of this module (a typo would silently document nothing)."""
    test_classes = [item for item in globals().values() if isinstance(item, type) and issubclass(item, TestCase)]
    names = {(cls.__name__, name) for cls in test_classes for name in dir(cls) if name.startswith("test_")}
    for table in (SKIPPED, EXPECTED_FAILURES, SKIPPED_BY_THE_SHARED_TESTS):
        for keys in table.values():
            for key in keys:
                owner, _, pattern = key.rpartition(".")
                assert any(
                    (not owner or owner == class_name)
                    and (name == pattern or (pattern.endswith("*") and name.startswith(pattern[:-1])))
                    for class_name, name in names
                ), key


@pytest.mark.parametrize(
    ("reason", "accepted"),
    [
        ("test requires accelerator", True),
        ("test requires multiple CUDA GPUs", True),
        ("test requires a GPU or XPU with more than 40 GiB of memory", True),
        ("test requires MPS", True),
        ("test requires deepspeed", importlib.util.find_spec("deepspeed") is None),
        ("test requires a-library-nobody-installed", True),
        ("test requires the kernels library", importlib.util.find_spec("kernels") is None),
        ("test requires PyTorch NPU", True),
        ("test requires torch", False),  # installed: a skip for it means something else went wrong
        ("test requires numpy", False),
        ("test is slow", False),
        ("Model does not support SDPA", False),
        ("GPU tests are flaky", False),  # names hardware, but is not a missing-hardware reason
    ],
)
def test_skips_accepted_by_their_reason(reason, accepted):
    assert _missing_on_this_machine(reason) is accepted


def test_an_unlisted_skip_fails_with_its_name_and_reason():
    class Upstream(TestCase):
        @unittest.skip("test requires accelerator")
        def test_new_gpu_test(self):
            pass

        @unittest.skip("flaky upstream")
        def test_new_flaky_test(self):
            pass

        def test_skips_itself(self):
            self.skipTest("Model has a new feature")

    result = unittest.TestResult()
    unittest.defaultTestLoader.loadTestsFromTestCase(_documented(Upstream)).run(result)
    assert [test.id().rpartition(".")[2] for test, _ in result.skipped] == ["test_new_gpu_test"]
    failures = {test.id().rpartition(".")[2]: message for test, message in result.failures}
    assert set(failures) == {"test_new_flaky_test", "test_skips_itself"}
    assert "test_new_flaky_test is skipped (flaky upstream)" in failures["test_new_flaky_test"]
    assert "test_skips_itself skipped itself (Model has a new feature)" in failures["test_skips_itself"]
