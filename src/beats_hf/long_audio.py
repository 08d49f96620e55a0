"""Embeddings of recordings of any length: sliding windows, batched, stitched back on the 160 ms row grid.

BEATs attends over all patches of its input, so one forward over a whole recording costs time and memory quadratic
in its length (the attention bias alone is `heads x patches^2` floats: 3.9 GB for 3 minutes). This module runs the
model on windows of `window_seconds` that start every `hop_seconds`, `batch_size` windows at a time, so the working
set is bounded by one batch and the total cost grows linearly with the recording (defaults: 10 s windows every 8 s,
4 per batch). `beats-hf embed` sends every recording longer than one window through this path by default.

Grid. The model sees rows of 16 Kaldi frames (160 ms of hop, 0.175 s of audio each); row `r` of the recording covers
samples `[2560 r, 2560 r + 2800)`. Windows start on that grid (the hop is rounded to a whole number of rows), so row
`r_local` of a window starting at row `s` holds exactly the frames of recording row `s + r_local`: the features are
identical to those of the whole recording, only the context the Transformer sees differs.

Stitching. Every row of the recording is taken from exactly one window: the one in which it is most central, i.e.
where its distance to the nearest window edge is largest (an edge that is also an end of the recording does not
count, since no window has context beyond it); ties go to the earlier window. A row's vector is the mean of its
frequency patches (8 for 128 mel bins). The clip embedding (`pooling="mean"`) is the mean of the row vectors, i.e. the
mean over all patches of the recording with every patch counted once.

Frequency bands (`pooling="frequency_bands"`, what a `classifier_pooling="frequency_bands"` head sees): per band, the
mean and standard deviation over the stitched rows, each row counted once. Every batch of windows contributes its
rows' count `n`, per-band mean `m` and sum of squared deviations `M2`; two disjoint sets A, B merge exactly as
`M2 = M2_A + M2_B + (m_B - m_A)^2 n_A n_B / (n_A + n_B)` (Chan, Golub & LeVeque, 1979), in float64. So the result is
exactly the pooling of the stitched rows, in memory independent of the length; it differs from one forward over the
whole recording only where the rows do (the Transformer's context near window edges).

When one window covers the whole recording the result equals a plain forward pass: the mean over the valid patches,
the per-row means and the per-band statistics.

The last window is usually shorter; it is right-padded to the window length and masked (attention mask), which gives
the same outputs as running it alone.

    from beats_hf.long_audio import embed_long_audio
    result = embed_long_audio(model, feature_extractor, waveform)  # 16 kHz mono, any length >= 0.175 s
    result.clip_embedding, result.frame_embeddings, result.frame_times
    bands = embed_long_audio(model, feature_extractor, waveform, pooling="frequency_bands").clip_embedding
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

from .configuration_beats import CLASSIFIER_POOLINGS
from .modeling_beats import frequency_band_statistics, frequency_rows, weighted_layer_sum

DEFAULT_WINDOW_SECONDS = 10.0

__all__ = ["DEFAULT_WINDOW_SECONDS", "LongAudioEmbeddings", "embed_long_audio", "plan_windows", "row_owners"]


@dataclass
class LongAudioEmbeddings:
    """Output of [`embed_long_audio`], float32 tensors on the CPU.

    Attributes:
        clip_embedding (`torch.Tensor` of shape `(hidden_size,)` or `(2 * bands * hidden_size,)`):
            `pooling="mean"`: the mean over all patches of the recording (each counted once). `"frequency_bands"`:
            for each frequency band the mean, then the standard deviation, over the stitched rows.
        frame_embeddings (`torch.Tensor` of shape `(rows, hidden_size)`):
            One vector per 160 ms row: the mean of the row's frequency patches, from the window where the row is most
            central.
        frame_times (`torch.Tensor` of shape `(rows,)`):
            Start time of each row in seconds (`0.16 * r`); row `r` spans `[0.16 r, 0.16 r + 0.175)` s.
        window_starts (`torch.Tensor` of shape `(windows,)`):
            Start time of each window in seconds.
        window_seconds (`float`):
            Window length used.
        hop_seconds (`float`):
            Hop used, after rounding to whole 160 ms rows.
    """

    clip_embedding: torch.Tensor
    frame_embeddings: torch.Tensor
    frame_times: torch.Tensor
    window_starts: torch.Tensor
    window_seconds: float
    hop_seconds: float


@dataclass
class _Grid:
    row_samples: int  # samples between consecutive rows (16 x hop_length = 2560)
    row_span: int  # samples one row needs (frame_length + 15 x hop_length = 2800)
    window_samples: int
    window_rows: int  # rows of a full window
    hop_rows: int


def _grid(feature_extractor, window_seconds: float, hop_seconds: float | None) -> _Grid:
    sampling_rate = feature_extractor.sampling_rate
    patch_size = getattr(feature_extractor, "patch_size", 16)
    hop_length = getattr(feature_extractor, "hop_length", 160)
    frame_length = getattr(feature_extractor, "frame_length", 400)
    row_samples = patch_size * hop_length
    row_span = frame_length + (patch_size - 1) * hop_length
    if not window_seconds > 0:
        raise ValueError(f"`window_seconds` must be positive, got {window_seconds!r}.")
    window_samples = round(window_seconds * sampling_rate)
    window_rows = 0
    if window_samples >= row_span:
        window_rows = (1 + (window_samples - frame_length) // hop_length) // patch_size
    if window_rows < 1:
        raise ValueError(
            f"`window_seconds` ({window_seconds}) is shorter than one row of patches ({row_span / sampling_rate} s)."
        )
    if hop_seconds is None:
        hop_seconds = 0.8 * window_seconds
    if not hop_seconds > 0:
        raise ValueError(f"`hop_seconds` must be positive, got {hop_seconds!r}.")
    if hop_seconds > window_seconds:
        raise ValueError(
            f"`hop_seconds` ({hop_seconds}) is larger than `window_seconds` ({window_seconds}): the windows would "
            "leave gaps. Use a hop at most the window length (overlap = window - hop)."
        )
    hop_rows = round(hop_seconds * sampling_rate / row_samples)
    if hop_rows < 1:
        raise ValueError(
            f"`hop_seconds` ({hop_seconds}) rounds to 0 rows: it must be at least {row_samples / sampling_rate} s "
            "(the hop is rounded to whole 160 ms rows)."
        )
    if hop_rows > window_rows:
        raise ValueError(
            f"`hop_seconds` ({hop_seconds}) is {hop_rows} rows but a {window_seconds} s window holds only "
            f"{window_rows} rows: the windows would leave gaps. Use a smaller hop."
        )
    return _Grid(row_samples, row_span, window_samples, window_rows, hop_rows)


def plan_windows(
    num_samples: int, feature_extractor, window_seconds: float = 10.0, hop_seconds: float | None = None
) -> tuple[list[tuple[int, int]], int, _Grid]:
    """Sample ranges `[(start, end)]` of the windows, the number of rows of the recording, and the grid.

    Windows start every `hop_rows` rows and stop once a window reaches the last row; the last one is cut at the end
    of the recording.
    """
    grid = _grid(feature_extractor, window_seconds, hop_seconds)
    if num_samples < grid.row_span:
        sampling_rate = feature_extractor.sampling_rate
        raise ValueError(
            f"The recording has {num_samples} samples ({num_samples / sampling_rate:.4f} s), fewer than the "
            f"{grid.row_span} ({grid.row_span / sampling_rate} s) that one row of BEATs patches needs."
        )
    total_rows = (num_samples - grid.row_span) // grid.row_samples + 1
    num_windows = 1 + max(0, math.ceil((total_rows - grid.window_rows) / grid.hop_rows))
    windows = []
    for index in range(num_windows):
        start = index * grid.hop_rows * grid.row_samples
        windows.append((start, min(start + grid.window_samples, num_samples)))
    return windows, total_rows, grid


def _window_rows(window: tuple[int, int], grid: _Grid) -> tuple[int, int]:
    """(first row of the recording, number of rows) of a window."""
    start, end = window
    return start // grid.row_samples, (end - start - grid.row_span) // grid.row_samples + 1


def row_owners(windows: list[tuple[int, int]], total_rows: int, grid: _Grid) -> torch.Tensor:
    """`(total_rows,)` index of the window each row is taken from: the one where the row is most central."""
    owner = torch.zeros(total_rows, dtype=torch.long)
    best_margin = torch.full((total_rows,), -1, dtype=torch.long)
    for index, window in enumerate(windows):
        first_row, num_rows = _window_rows(window, grid)
        local = torch.arange(num_rows)
        # Distance to the nearest window edge; the recording's own ends are not edges.
        left = local if first_row > 0 else torch.full_like(local, total_rows)
        right = num_rows - 1 - local if first_row + num_rows < total_rows else torch.full_like(local, total_rows)
        margin = torch.minimum(left, right)
        target = slice(first_row, first_row + num_rows)
        better = margin > best_margin[target]  # strict: ties stay with the earlier window
        owner[target] = torch.where(better, index, owner[target])
        best_margin[target] = torch.where(better, margin, best_margin[target])
    return owner


class _BandMoments:
    """Count, per-band mean and sum of squared deviations of the rows seen so far, merged batch by batch (float64)."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, None, None

    def add(self, rows: torch.Tensor) -> None:
        """`rows`: `(n, bands, C)`, rows not seen before."""
        count = rows.shape[0]
        if count == 0:
            return
        rows = rows.to(torch.float64, copy=True)  # our own copy, centred and squared in place
        mean = rows.mean(0)
        m2 = rows.sub_(mean).square_().sum(0)
        if self.count == 0:
            self.count, self.mean, self.m2 = count, mean, m2
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * count / total)
        self.count = total

    def statistics(self) -> torch.Tensor:
        """`(bands * 2C,)`: the `frequency_bands` pooling of all rows added."""
        return frequency_band_statistics(self.mean, self.m2 / self.count)


def _select_hidden(outputs, layer: int | None, layer_weights: torch.Tensor | None) -> torch.Tensor:
    if layer_weights is not None:
        dtype = torch.promote_types(outputs.hidden_states[0].dtype, torch.float32)
        return weighted_layer_sum([state.to(dtype) for state in outputs.hidden_states], layer_weights)
    hidden = outputs.hidden_states[layer] if layer is not None else outputs.last_hidden_state
    return hidden.to(torch.promote_types(hidden.dtype, torch.float32))  # bf16/fp16 up to float32, float64 kept


def _window_features(feature_extractor, waveform: torch.Tensor, windows: list[tuple[int, int]], device):
    """Fbank of a batch of windows, padded to the longest, with its frame mask."""
    return feature_extractor(
        [waveform[start:end] for start, end in windows],
        sampling_rate=feature_extractor.sampling_rate,
        return_tensors="pt",
        device=device,
    )


@torch.inference_mode()
def embed_long_audio(
    model,
    feature_extractor,
    waveform: np.ndarray | torch.Tensor,
    window_seconds: float = DEFAULT_WINDOW_SECONDS,
    hop_seconds: float | None = None,
    batch_size: int = 4,
    layer: int | None = None,
    layer_weights: torch.Tensor | None = None,
    sampling_rate: int | None = None,
    pooling: str = "mean",
) -> LongAudioEmbeddings:
    """Clip and per-row embeddings of a recording of any length, in bounded memory.

    Args:
        model ([`BeatsModel`] or a model with a `.beats` encoder):
            The encoder; runs on its own device and dtype, in inference mode.
        feature_extractor ([`BeatsFeatureExtractor`]):
            Computes the fbank of each window (on the model's device).
        waveform (`np.ndarray` or `torch.Tensor` of shape `(num_samples,)` or `(1, num_samples)`):
            Mono float audio in [-1, 1] at the feature extractor's sampling rate (16 kHz); at least 0.175 s.
        window_seconds (`float`, *optional*, defaults to 10.0):
            Window length. BEATs was trained on 10 s clips.
        hop_seconds (`float`, *optional*):
            Distance between window starts, rounded to whole 160 ms rows. Defaults to 0.8 x `window_seconds` (8 s for
            10 s windows, i.e. 2 s of overlap). Must not exceed the window (overlap = window - hop).
        batch_size (`int`, *optional*, defaults to 4):
            Windows per forward pass; the peak memory grows with it, not with the recording.
        layer (`int`, *optional*):
            Index into the hidden states (0 = encoder input, -1 = last layer). Default: `last_hidden_state`.
        layer_weights (`torch.Tensor` of shape `(num_hidden_layers + 1,)`, *optional*):
            Weights of a weighted sum of all hidden states instead of one layer.
        sampling_rate (`int`, *optional*):
            Sampling rate of `waveform`, checked against the feature extractor's.
        pooling (`str`, *optional*, defaults to `"mean"`):
            The clip embedding: `"mean"` over all patches, or `"frequency_bands"` (per band, mean and standard
            deviation over time, as `classifier_pooling="frequency_bands"`).

    Returns:
        [`LongAudioEmbeddings`].
    """
    if layer is not None and layer_weights is not None:
        raise ValueError("Pass either `layer` or `layer_weights`, not both.")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be at least 1, got {batch_size!r}.")
    if pooling not in CLASSIFIER_POOLINGS:
        raise ValueError(f"`pooling` must be one of {CLASSIFIER_POOLINGS}, got {pooling!r}.")
    if sampling_rate is not None and sampling_rate != feature_extractor.sampling_rate:
        raise ValueError(
            f"The audio is sampled at {sampling_rate} Hz but the feature extractor expects "
            f"{feature_extractor.sampling_rate} Hz: resample it first."
        )
    waveform = torch.as_tensor(waveform)
    if waveform.ndim == 2 and 1 in waveform.shape:
        waveform = waveform.reshape(-1)
    if waveform.ndim != 1:
        raise ValueError(f"`waveform` must be mono audio of shape (num_samples,), got {tuple(waveform.shape)}.")
    waveform = waveform.float()

    windows, total_rows, grid = plan_windows(waveform.shape[0], feature_extractor, window_seconds, hop_seconds)
    owner = row_owners(windows, total_rows, grid)
    first_rows, rows_per_window = (torch.tensor(column) for column in zip(*(_window_rows(w, grid) for w in windows)))
    encoder = model.base_model
    parameter = next(encoder.parameters())
    bands = encoder.config.num_frequency_patches
    need_hidden_states = layer is not None or layer_weights is not None

    frames = torch.zeros(total_rows, encoder.config.hidden_size)
    moments = _BandMoments() if pooling == "frequency_bands" else None
    for first in range(0, len(windows), batch_size):
        batch_windows = windows[first : first + batch_size]
        inputs = _window_features(feature_extractor, waveform, batch_windows, parameter.device)
        outputs = encoder(
            inputs["input_features"].to(parameter.dtype),
            attention_mask=inputs.get("attention_mask"),
            output_hidden_states=need_hidden_states,
        )
        hidden = _select_hidden(outputs, layer, layer_weights)
        batch = hidden.shape[0]
        band_rows = frequency_rows(hidden, bands)
        # Each window keeps only the rows it owns (padding rows of a short last window are past its row count).
        ids = torch.arange(first, first + batch)
        local = torch.arange(band_rows.shape[1])
        rows = first_rows[ids].unsqueeze(1) + local
        owned = (local < rows_per_window[ids].unsqueeze(1)) & (owner[rows.clamp(max=total_rows - 1)] == ids[:, None])
        owned_rows = band_rows[owned.to(hidden.device)]  # (owned, bands, C), in the order of rows[owned]
        frames[rows[owned]] = owned_rows.mean(1).float().cpu()
        if moments is not None:
            moments.add(owned_rows)
        # Free this batch's activations (all hidden states, with a layer choice) before the next forward allocates.
        del inputs, outputs, hidden, band_rows, owned_rows

    sampling_rate = feature_extractor.sampling_rate
    seconds_per_row = grid.row_samples / sampling_rate
    clip_embedding = moments.statistics().float().cpu() if moments is not None else frames.mean(0)
    return LongAudioEmbeddings(
        clip_embedding=clip_embedding,
        frame_embeddings=frames,
        frame_times=torch.arange(total_rows, dtype=torch.float64) * seconds_per_row,
        window_starts=torch.tensor([start for start, _ in windows], dtype=torch.float64) / sampling_rate,
        window_seconds=float(window_seconds),
        hop_seconds=grid.hop_rows * seconds_per_row,
    )
