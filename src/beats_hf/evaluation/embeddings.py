"""The encoders under evaluation and their per-layer embeddings of a split, computed once and cached.

An encoder is named by a model spec: a beats_hf folder or Hub id (the trained model), `random:M` (M's architecture,
initialised from seed 0, never trained) or `logmel` (no network: the model-free baseline, with a single "layer").

For every clip and every hidden state (0 = encoder input, then one per layer) one forward pass gives:

- `mean`: the mean over the valid patches, `(clips, layers, width)` float32;
- `frequency_bands`: per frequency band the mean and standard deviation over the valid time rows (the model's
  `pool_frequency_bands`), `(clips, layers, 2 * bands * width)` float32;
- `rows`: one token per 160 ms row (the mean of the row's frequency patches, as `beats-hf embed --frames`), for the
  attentive probe: `(clips, layers, max rows, width)` in float16, zero-padded, with `row_counts` `(clips,)`. Rows
  rather than all patches: 8x less to store (the frequency detail stays in `frequency_bands`), and float16 halves it
  again; the attentive probe still sees the clip's time structure.

`logmel` takes the model's own `BeatsFeatureExtractor` fbank (the same 128-bin Kaldi log-mel the encoders see): per
mel bin the mean and standard deviation over the valid frames (both poolings give these 256 numbers: per-bin
statistics already are its finest frequency bands), and as row tokens the mean log-mel of each 16 frames.

Each clip goes through one forward whole (benchmark clips are short; for long recordings use `beats-hf embed`).

Cache: `OUTPUT/cache/<model>-<model key>/<split>-<data key>.safetensors`, written under a temporary name and renamed
into place. The model key hashes the weights actually used (every tensor of the state dict), the configuration, the
feature extractor's settings and this file's format version, so a retrained or changed model never reuses another's
embeddings; the data key hashes the data source, split, audio column and the `datasets` fingerprint of the split.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

from ..audio_data import AudioClips, AudioFeatureCollator
from ..feature_extraction_beats import BeatsFeatureExtractor
from ..modeling_beats import masked_mean, pool_frequency_bands
from ..sources import resolve_source

LOGMEL = "logmel"
RANDOM_PREFIX = "random:"
RANDOM_SEED = 0
FORMAT_VERSION = 1
FRAMES_PER_ROW = 16  # one patch row: 16 fbank frames, 160 ms
EMBEDDINGS = ("mean", "frequency_bands", "rows")

__all__ = ["EMBEDDINGS", "LOGMEL", "Encoder", "check_model_spec", "data_key", "embed_split", "load_encoder"]


@dataclass
class Encoder:
    """A loaded model spec: `model` is the bare encoder (None for `logmel`), `key` its cache key."""

    spec: str
    model: torch.nn.Module | None
    feature_extractor: BeatsFeatureExtractor
    key: str

    @property
    def cache_name(self) -> str:
        """`<last two parts of the spec>-<key>`, e.g. `random_iteration_2_ssl-0123456789ab`."""
        prefix = "random_" if self.spec.startswith(RANDOM_PREFIX) else ""
        parts = [part for part in re.split(r"[/\\]", self.spec.removeprefix(RANDOM_PREFIX)) if part]
        readable = re.sub(r"[^A-Za-z0-9._-]+", "_", prefix + "_".join(parts[-2:]))
        return f"{readable}-{self.key[:12]}"


def _parse(spec: str) -> tuple[str, str | None]:
    """spec -> (kind, source) with kind "trained", "random" or "logmel"."""
    if spec == LOGMEL:
        return LOGMEL, None
    if spec.startswith(RANDOM_PREFIX):
        source = spec[len(RANDOM_PREFIX):]
        if not source:
            raise ValueError(f"Model {spec!r}: 'random:' must be followed by a model folder or Hub id.")
        return "random", source
    return "trained", spec


def check_model_spec(spec: str, trust_remote_code: bool = False) -> None:
    """Fails at once, naming the spec, when it cannot be a model: before any embedding is computed."""
    kind, source = _parse(spec)
    if kind == LOGMEL:
        return
    try:
        AutoConfig.from_pretrained(resolve_source(source), trust_remote_code=trust_remote_code)
    except Exception as error:  # noqa: BLE001 - any failure to find a model becomes one message naming the spec
        raise ValueError(f"Unknown model {spec!r}: {' '.join(str(error).split())}") from error


def _settings_digest(*parts) -> hashlib._Hash:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest


def _public(settings: dict) -> dict:
    ignored = {"transformers_version", "architectures", "id2label", "label2id", "auto_map"}
    return {key: value for key, value in settings.items() if not key.startswith("_") and key not in ignored}


def load_encoder(spec: str, device: str = "cpu", trust_remote_code: bool = False) -> Encoder:
    kind, source = _parse(spec)
    if kind == LOGMEL:
        feature_extractor = BeatsFeatureExtractor()
        key = _settings_digest(FORMAT_VERSION, LOGMEL, _public(feature_extractor.to_dict())).hexdigest()
        return Encoder(spec, None, feature_extractor, key)
    path = resolve_source(source)
    feature_extractor = AutoFeatureExtractor.from_pretrained(path, trust_remote_code=trust_remote_code)
    if kind == "random":
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        with torch.random.fork_rng(devices=[]):  # a fixed initialisation, without touching the caller's RNG
            torch.manual_seed(RANDOM_SEED)
            model = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    else:
        model = AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code)
    encoder = model.base_model.eval()
    digest = _settings_digest(FORMAT_VERSION, _public(encoder.config.to_dict()),
                              _public(feature_extractor.to_dict()))
    for name, tensor in sorted(encoder.state_dict().items()):  # the weights actually used, whatever their source
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return Encoder(spec, encoder.to(device), feature_extractor, digest.hexdigest())


def data_key(data: str, split: str, audio_column: str, dataset) -> str:
    location = os.path.abspath(os.path.expanduser(data)) if os.path.exists(os.path.expanduser(data)) else data
    fingerprint = getattr(dataset, "_fingerprint", None)
    return _settings_digest(location, split, audio_column, fingerprint, len(dataset)).hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# One batch
# ---------------------------------------------------------------------------------------------------------------------


def _pad_rows(rows: torch.Tensor, length: int) -> torch.Tensor:
    return torch.nn.functional.pad(rows, (0, 0, 0, length - rows.shape[-2]))


@torch.inference_mode()
def _logmel_batch(batch: dict) -> dict[str, torch.Tensor]:
    features = batch["input_features"].float()  # (batch, frames, 128)
    mask = batch["attention_mask"].bool()
    valid = mask[..., None]
    mean = masked_mean(features, valid, dim=1)
    std = masked_mean((features - mean[:, None]).square(), valid, dim=1).sqrt()
    statistics = torch.cat([mean, std], -1)[:, None]  # one "layer"
    usable = features.shape[1] // FRAMES_PER_ROW * FRAMES_PER_ROW
    rows = features[:, :usable].reshape(features.shape[0], -1, FRAMES_PER_ROW, features.shape[-1]).mean(2)
    row_counts = mask.sum(1) // FRAMES_PER_ROW
    return {"mean": statistics, "frequency_bands": statistics, "rows": rows[:, None], "row_counts": row_counts}


@torch.inference_mode()
def _encoder_batch(model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    outputs = model(batch["input_features"], attention_mask=batch.get("attention_mask"), output_hidden_states=True)
    states = torch.stack([state.float() for state in outputs.hidden_states], 1)  # (batch, layers, patches, width)
    size, layers, patches, width = states.shape
    bands = model.config.num_frequency_patches
    mask = outputs.patch_mask
    if mask is None:
        mask = torch.ones(size, patches, dtype=torch.bool, device=states.device)
    flat = states.flatten(0, 1)
    flat_mask = mask.repeat_interleave(layers, 0)
    return {
        "mean": masked_mean(states, mask[:, None, :, None], dim=2),
        "frequency_bands": pool_frequency_bands(flat, flat_mask, bands).view(size, layers, -1),
        "rows": flat.view(size, layers, patches // bands, bands, width).mean(3),
        "row_counts": mask.view(size, -1, bands)[..., 0].sum(-1),
    }


# ---------------------------------------------------------------------------------------------------------------------
# A split, cached
# ---------------------------------------------------------------------------------------------------------------------


def _save_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(temporary), metadata=metadata)
    os.replace(temporary, path)


def embed_split(encoder: Encoder, dataset, cache_path: Path, needed: set[str], audio_column: str = "audio",
                batch_size: int = 16, device: str = "cpu", description: str = "embedding"
                ) -> tuple[dict[str, torch.Tensor], bool]:
    """(tensors, reused): `index` (the dataset rows of the readable clips) plus the `needed` embeddings (a subset of
    EMBEDDINGS; `rows` brings `row_counts`), from `cache_path` when it holds them all, else computed in one pass over
    the split and written there."""
    wanted = {"index"} | set(needed) | ({"row_counts"} if "rows" in needed else set())
    if cache_path.exists():
        cached = load_file(str(cache_path))
        if wanted <= set(cached):
            return {name: cached[name] for name in wanted}, True
        # An earlier run stored other embeddings: compute what both need, so the file keeps serving both.
        wanted |= set(cached)
    clips = AudioClips(dataset, crop_seconds=None, label_column=None, audio_column=audio_column, replace_bad=False,
                       return_index=True)
    collator = AudioFeatureCollator(encoder.feature_extractor, device=device)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in wanted}
    for start in tqdm(range(0, len(clips), batch_size), desc=description, unit="batch"):
        batch = collator([clips[i] for i in range(start, min(start + batch_size, len(clips)))])
        if not batch:
            continue
        result = _logmel_batch(batch) if encoder.model is None else _encoder_batch(encoder.model, batch)
        result["index"] = batch["index"]
        for name in wanted:
            value = result[name].cpu()
            parts[name].append(value.half() if name == "rows" else value)
    if not parts["index"]:
        raise ValueError(f"{description}: no readable audio clip in the split.")
    tensors = {}
    for name, values in parts.items():
        if name == "rows":
            longest = max(value.shape[-2] for value in values)
            values = [_pad_rows(value, longest) for value in values]
        tensors[name] = torch.cat(values)
    _save_atomic(cache_path, tensors, {"model": encoder.spec, "model_key": encoder.key,
                                       "format_version": str(FORMAT_VERSION)})
    return {name: tensors[name] for name in wanted}, False
