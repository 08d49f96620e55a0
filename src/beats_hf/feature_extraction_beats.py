"""Feature extractor for BEATs: the Kaldi log-mel filter bank of the official preprocessing, batched in torch.

The official BEATs code computes `torchaudio.compliance.kaldi.fbank` one clip at a time inside the model. This file
ports that filter bank to plain torch, following Kaldi's operation order so that on CPU in float32 it gives the same
bits as torchaudio, and runs it on a whole padded batch at once (on any device).
"""

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import TensorType, logging

logger = logging.get_logger(__name__)

# Kaldi defaults the official preprocessing keeps (torchaudio.compliance.kaldi.fbank with num_mel_bins=128,
# sample_frequency=16000, frame_length=25, frame_shift=10 and nothing else changed).
INPUT_SCALE = 2.0**15  # the official code feeds int16-range audio to Kaldi
PREEMPHASIS_COEFFICIENT = 0.97
POVEY_WINDOW_POWER = 0.85
LOW_FREQUENCY = 20.0
FLOAT32_EPSILON = torch.finfo(torch.float32).eps  # 1.1920929e-07, the mel-energy floor before the log

# Frames per block of the CPU filter bank (4 clips of 10 s): large enough to batch, small enough for the caches.
_CPU_BLOCK_FRAMES = 4096

# Above this peak the audio is almost certainly in integer PCM range rather than [-1, 1].
_SUSPICIOUS_PEAK = 2.0


def num_frames(num_samples: int, frame_length: int = 400, hop_length: int = 160) -> int:
    """Number of Kaldi frames (`snip_edges=True`) in a clip of `num_samples` samples: `1 + (n - 400) // 160`, or 0 when
    the clip is shorter than one window."""
    if num_samples < frame_length:
        return 0
    return 1 + (num_samples - frame_length) // hop_length


def _mel_scale(frequency):
    return 1127.0 * (1.0 + frequency / 700.0).log()


def _mel_scale_scalar(frequency: float) -> float:
    return 1127.0 * math.log(1.0 + frequency / 700.0)


def _kaldi_mel_banks(num_mel_bins: int, fft_size: int, sampling_rate: int) -> torch.Tensor:
    """Kaldi's triangular mel filters `(num_mel_bins, fft_size // 2 + 1)`, float32 on CPU.

    Built the way torchaudio builds them (Python-float mel edges, float32 tensors, triangles in mel space over the
    FFT bins below Nyquist) so that the fbank stays bit-exact; the Nyquist column gets weight 0 as in Kaldi.
    """
    nyquist = 0.5 * sampling_rate
    bin_width = sampling_rate / fft_size
    mel_low = _mel_scale_scalar(LOW_FREQUENCY)
    mel_high = _mel_scale_scalar(nyquist)
    mel_delta = (mel_high - mel_low) / (num_mel_bins + 1)

    index = torch.arange(num_mel_bins, dtype=torch.float32).unsqueeze(1)
    left = mel_low + index * mel_delta
    center = mel_low + (index + 1.0) * mel_delta
    right = mel_low + (index + 2.0) * mel_delta

    fft_mel = _mel_scale(bin_width * torch.arange(fft_size // 2, dtype=torch.float32)).unsqueeze(0)
    rising = (fft_mel - left) / (center - left)
    falling = (right - fft_mel) / (right - center)
    banks = torch.minimum(rising, falling).clamp_min(0.0)
    return F.pad(banks, (0, 1), mode="constant", value=0.0)


@functools.lru_cache(maxsize=32)
def _fbank_constants(
    num_mel_bins: int, sampling_rate: int, frame_length: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(povey window `(frame_length,)`, mel filters `(num_mel_bins, fft_size // 2 + 1)`, epsilon), built once per
    device and dtype."""
    fft_size = 1 << (frame_length - 1).bit_length()  # Kaldi's round_to_power_of_two
    window = torch.hann_window(frame_length, periodic=False, dtype=torch.float32).pow(POVEY_WINDOW_POWER)
    mel_banks = _kaldi_mel_banks(num_mel_bins, fft_size, sampling_rate)
    epsilon = torch.tensor(FLOAT32_EPSILON, dtype=torch.float32)
    return tuple(tensor.to(device=device, dtype=dtype) for tensor in (window, mel_banks, epsilon))


def kaldi_fbank(
    waveforms: torch.Tensor,
    num_mel_bins: int = 128,
    sampling_rate: int = 16000,
    frame_length: int = 400,
    hop_length: int = 160,
    input_scale: float = INPUT_SCALE,
) -> torch.Tensor:
    """Kaldi log-mel filter bank of a batch of clips, as the official BEATs preprocessing computes it.

    Equivalent to `torchaudio.compliance.kaldi.fbank(w[None] * 2**15, num_mel_bins=128, sample_frequency=16000,
    frame_length=25, frame_shift=10)` applied to every row `w` and stacked (bit-exact on CPU in float32), but computed
    in one batched pass: `snip_edges` framing, per-frame DC removal, pre-emphasis 0.97, povey window, power spectrum
    of a 512-point FFT, Kaldi mel filters from 20 Hz to Nyquist, floor at float32 epsilon, natural log. No
    normalisation is applied. Every row is processed at the full length `N`, so frames that overlap right padding
    see the padding as signal.

    Args:
        waveforms (`torch.Tensor` of shape `(batch_size, num_samples)` or `(num_samples,)`):
            Floating-point audio in [-1, 1] at `sampling_rate`; `num_samples` must be at least `frame_length`.
        num_mel_bins (`int`, *optional*, defaults to 128):
            Number of mel filters.
        sampling_rate (`int`, *optional*, defaults to 16000):
            Sampling rate of `waveforms`, in Hz (the top filter ends at its Nyquist frequency).
        frame_length (`int`, *optional*, defaults to 400):
            Window length in samples (25 ms at 16 kHz); the FFT size is the next power of two.
        hop_length (`int`, *optional*, defaults to 160):
            Frame shift in samples (10 ms at 16 kHz).
        input_scale (`float`, *optional*, defaults to 32768.0):
            Factor applied to the audio first (Kaldi expects int16-range samples).

    Returns:
        `torch.Tensor` of shape `(batch_size, num_frames, num_mel_bins)`: the log-mel energies, with
        `num_frames = 1 + (num_samples - frame_length) // hop_length`, in the dtype and on the device of `waveforms`.
    """
    if waveforms.ndim == 1:
        waveforms = waveforms.unsqueeze(0)
    if waveforms.ndim != 2:
        raise ValueError(f"`waveforms` must have shape (batch_size, num_samples), got {tuple(waveforms.shape)}.")
    if not waveforms.is_floating_point():
        raise ValueError(f"`waveforms` must be a floating-point tensor, got {waveforms.dtype}.")
    batch_size, length = waveforms.shape
    frames = num_frames(length, frame_length, hop_length)
    if frames == 0:
        raise ValueError(f"`waveforms` has {length} samples, fewer than one {frame_length}-sample Kaldi window.")
    window, mel_banks, epsilon = _fbank_constants(
        num_mel_bins, sampling_rate, frame_length, waveforms.device, waveforms.dtype
    )

    if waveforms.device.type != "cpu" or batch_size * frames <= _CPU_BLOCK_FRAMES:
        return _fbank_block(waveforms, frames, input_scale, frame_length, hop_length, window, mel_banks, epsilon)
    # On CPU a whole batch's intermediates (5 x 2 KB per frame) fall out of the caches and cost more in memory traffic
    # than the arithmetic: compute blocks of whole clips of at most _CPU_BLOCK_FRAMES frames into one output.
    output = torch.empty(batch_size, frames, num_mel_bins, dtype=waveforms.dtype)
    rows = max(1, _CPU_BLOCK_FRAMES // frames)
    for start in range(0, batch_size, rows):
        block = waveforms[start : start + rows]
        output[start : start + rows] = _fbank_block(
            block, frames, input_scale, frame_length, hop_length, window, mel_banks, epsilon
        )
    return output


def _fbank_block(waveforms, frames, input_scale, frame_length, hop_length, window, mel_banks, epsilon):
    """`kaldi_fbank` of `waveforms` `(batch, samples)` in one pass, with the constants already built."""
    batch_size = waveforms.shape[0]
    num_mel_bins = mel_banks.shape[0]
    fft_size = 2 * (mel_banks.shape[1] - 1)
    windowed = windowed_frames(waveforms, frames, input_scale, frame_length, hop_length, window, fft_size)
    spectrum = torch.fft.rfft(windowed).abs().pow(2.0)
    # One 2-D matmul against the transposed filter matrix, as torchaudio does, keeps its summation order and bits.
    mel_energies = torch.mm(spectrum.reshape(batch_size * frames, -1), mel_banks.T)
    log_mel = torch.max(mel_energies, epsilon).log()
    return log_mel.reshape(batch_size, frames, num_mel_bins)


def windowed_frames(waveforms, frames, input_scale, frame_length, hop_length, window, fft_size) -> torch.Tensor:
    """The FFT input of every Kaldi frame, `(batch, frames, fft_size)`: `snip_edges` framing, DC removal, pre-emphasis
    0.97, povey window, zero padding. Only elementwise ops and fixed-length reductions in torch's own kernels, so
    these bits do not depend on MKL (the FFT and the mel matmul after them do)."""
    batch_size, length = waveforms.shape
    scaled = (waveforms * input_scale).contiguous()
    strided = scaled.as_strided((batch_size, frames, frame_length), (length, hop_length, 1))
    strided = strided - strided.mean(dim=-1, keepdim=True)
    # Kaldi's pre-emphasis uses each frame's first sample as its own predecessor.
    previous = torch.cat([strided[..., :1], strided[..., :-1]], dim=-1)
    strided = strided - PREEMPHASIS_COEFFICIENT * previous
    strided = strided * window
    return F.pad(strided, (0, fft_size - frame_length), mode="constant", value=0.0)


class BeatsFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Constructs a BEATs feature extractor: the normalised Kaldi log-mel filter bank that the official BEATs code
    computes inside its model, `(kaldi_fbank(audio) - fbank_mean) / (2 * fbank_std)`, with a frame-level attention
    mask.

    Clips are right-padded with zeros to the longest one and the filter bank of the whole batch is computed in one
    batched torch pass (optionally on a GPU). Frames that lie inside a clip are exactly the frames of that clip run
    alone; frames past the clip's own Kaldi frame count are set to `padding_value` and get attention mask 0.

    This feature extractor inherits from [`~feature_extraction_sequence_utils.SequenceFeatureExtractor`] which contains
    most of the main methods. Users should refer to this superclass for more information regarding those methods.

    Args:
        feature_size (`int`, *optional*, defaults to 128):
            Number of mel bins of the filter bank (the last dimension of `input_features`).
        sampling_rate (`int`, *optional*, defaults to 16000):
            Sampling rate, in Hz, that the audio must have. BEATs checkpoints were trained on 16 kHz audio.
        padding_value (`float`, *optional*, defaults to 0.0):
            Value written into the features of padding frames.
        fbank_mean (`float`, *optional*, defaults to 15.41663):
            Mean subtracted from the log-mel energies (the official `fbank_mean`).
        fbank_std (`float`, *optional*, defaults to 6.55582):
            Standard deviation of the official normalisation; as in the official code the features are divided by
            twice this value.
        frame_length (`int`, *optional*, defaults to 400):
            Kaldi window length in samples (25 ms at 16 kHz).
        hop_length (`int`, *optional*, defaults to 160):
            Kaldi frame shift in samples (10 ms at 16 kHz).
        patch_size (`int`, *optional*, defaults to 16):
            Frames in one row of BEATs patches: clips giving fewer frames (shorter than 2800 samples at the defaults)
            cannot be encoded and are rejected.
        return_attention_mask (`bool`, *optional*, defaults to `True`):
            Whether [`~BeatsFeatureExtractor.__call__`] returns the frame-level `attention_mask` by default.
    """

    model_input_names = ["input_features", "attention_mask"]

    def __init__(
        self,
        feature_size: int = 128,
        sampling_rate: int = 16000,
        padding_value: float = 0.0,
        fbank_mean: float = 15.41663,
        fbank_std: float = 6.55582,
        frame_length: int = 400,
        hop_length: int = 160,
        patch_size: int = 16,
        return_attention_mask: bool = True,
        **kwargs,
    ):
        super().__init__(
            feature_size=feature_size,
            sampling_rate=sampling_rate,
            padding_value=padding_value,
            return_attention_mask=return_attention_mask,
            **kwargs,
        )
        self.fbank_mean = fbank_mean
        self.fbank_std = fbank_std
        self.frame_length = frame_length
        self.hop_length = hop_length
        self.patch_size = patch_size

    @property
    def min_num_samples(self) -> int:
        """Shortest clip, in samples, that gives one row of `patch_size` frames (2800 samples = 0.175 s at 16 kHz)."""
        return self.frame_length + (self.patch_size - 1) * self.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Kaldi frames of a clip of `num_samples` samples."""
        return num_frames(num_samples, self.frame_length, self.hop_length)

    def __call__(
        self,
        raw_speech: np.ndarray | torch.Tensor | Sequence[np.ndarray] | Sequence[torch.Tensor] | Sequence[float],
        sampling_rate: int | None = None,
        return_tensors: str | TensorType | None = None,
        return_attention_mask: bool | None = None,
        max_length: int | None = None,
        truncation: bool = False,
        device: str | torch.device | None = None,
        padding: bool | str = "longest",
        **kwargs,
    ) -> BatchFeature:
        """
        Featurize one clip or a batch of clips.

        Args:
            raw_speech (`np.ndarray`, `torch.Tensor`, or a list of them, or a list of floats):
                Mono float audio in [-1, 1] at 16 kHz: one 1-D clip, a list of 1-D clips of any lengths, or a 2-D
                `(batch_size, num_samples)` batch of equal-length clips. float64 and float16 are cast to float32;
                integer PCM is rejected (divide int16 by 32768 first). Each clip needs at least 2800 samples.
            sampling_rate (`int`, *optional*):
                Sampling rate of `raw_speech`. Must be 16000; pass it so that audio at another rate is caught instead
                of giving silently wrong features.
            return_tensors (`str` or [`~utils.TensorType`], *optional*):
                `"pt"` for torch tensors (on `device`), `"np"` for numpy arrays, `None` for lists of numpy arrays
                (one per clip).
            return_attention_mask (`bool`, *optional*):
                Whether to return the frame-level `attention_mask`; defaults to the extractor's
                `return_attention_mask`.
            max_length (`int`, *optional*):
                Length in samples used by `truncation=True` (clips are cut to it before featurizing) and by
                `padding="max_length"` (clips are padded to it).
            truncation (`bool`, *optional*, defaults to `False`):
                Whether to cut clips longer than `max_length` samples.
            device (`str` or `torch.device`, *optional*):
                Where to compute the filter bank, e.g. `"cuda"`. Defaults to the device of the input tensors (CPU for
                numpy input). With `return_tensors="pt"` the outputs stay on that device.
            padding (`bool` or `str`, *optional*, defaults to `"longest"`):
                `"longest"` (or `True`) pads to the longest clip, `"max_length"` to `max_length` samples; `False` (or
                `"do_not_pad"`) returns each clip's own frames only (ragged, so only with `return_tensors=None` when
                the lengths differ).

        Returns:
            [`BatchFeature`] with:
            - **input_features** -- float32 normalised log-mel features of shape `(batch_size, frames, feature_size)`,
              `frames = 1 + (num_samples - 400) // 160` for the padded length.
            - **attention_mask** -- int32 of shape `(batch_size, frames)`: 1 for the Kaldi frames of each clip alone,
              0 for padding frames (returned when `return_attention_mask` is set).
        """
        if sampling_rate is None:
            logger.warning(
                f"No `sampling_rate` was passed to {self.__class__.__name__}; assuming the audio is already at "
                f"{self.sampling_rate} Hz. Pass `sampling_rate={self.sampling_rate}` to silence this warning: audio "
                "at another rate gives silently wrong features."
            )
        elif sampling_rate != self.sampling_rate:
            raise ValueError(
                f"{self.__class__.__name__} got audio sampled at {sampling_rate} Hz, but BEATs expects "
                f"{self.sampling_rate} Hz audio. Resample it to {self.sampling_rate // 1000} kHz first, e.g. with "
                f"Hugging Face datasets: `dataset.cast_column('audio', Audio(sampling_rate={self.sampling_rate}))`."
            )
        if return_attention_mask is None:
            return_attention_mask = self.return_attention_mask
        if padding is True:
            padding = "longest"
        elif padding is False:
            padding = "do_not_pad"
        if padding not in ("longest", "max_length", "do_not_pad"):
            raise ValueError(f"`padding` must be True, False, 'longest', 'max_length' or 'do_not_pad': {padding!r}.")
        if (truncation or padding == "max_length") and max_length is None:
            raise ValueError("`max_length` (in samples) is needed with `truncation=True` or `padding='max_length'`.")

        if return_tensors not in (None, "pt", "np", TensorType.PYTORCH, TensorType.NUMPY):
            raise ValueError(f"`return_tensors` must be 'pt', 'np' or None, got {return_tensors!r}.")
        return_type = TensorType(return_tensors) if return_tensors is not None else None

        clips = self._to_clips(raw_speech)
        if truncation:
            clips = [clip[:max_length] for clip in clips]
        lengths = [int(clip.shape[0]) for clip in clips]
        for index, length in enumerate(lengths):
            if length < self.min_num_samples:
                raise ValueError(
                    f"Clip {index} has {length} samples ({length / self.sampling_rate:.4f} s), but BEATs needs at "
                    f"least {self.min_num_samples} samples ({self.min_num_samples / self.sampling_rate:g} s at "
                    f"{self.sampling_rate} Hz) to fill one row of {self.patch_size} frames. Pad it (e.g. with zeros) "
                    "or drop it."
                )
        padded_length = max(lengths)
        if padding == "max_length":
            if padded_length > max_length:
                index = lengths.index(padded_length)
                raise ValueError(
                    f"Clip {index} has {padded_length} samples, more than max_length={max_length}; pass "
                    "`truncation=True` to cut it."
                )
            padded_length = max_length

        if device is None:
            devices = {clip.device for clip in clips}
            device = devices.pop() if len(devices) == 1 else torch.device("cpu")
        device = torch.device(device)
        # A Python loop only to gather the clips; the filter bank below runs once on the whole batch.
        staging = clips[0].device if all(clip.device == clips[0].device for clip in clips) else device
        waveforms = torch.zeros(len(clips), padded_length, dtype=torch.float32, device=staging)
        for index, clip in enumerate(clips):
            waveforms[index, : lengths[index]] = clip.to(device=staging, dtype=torch.float32)
        waveforms = waveforms.to(device)
        self._check_values(waveforms)

        features, attention_mask = self.featurize_padded(waveforms, torch.tensor(lengths, device=device))
        frame_counts = attention_mask.sum(1).tolist()
        if padding == "do_not_pad" and len(set(frame_counts)) == 1:
            features, attention_mask = features[:, : frame_counts[0]], attention_mask[:, : frame_counts[0]]
        elif padding == "do_not_pad":
            if return_tensors is not None:
                raise ValueError(
                    "Clips of different lengths give different numbers of frames: use `padding=True` to return "
                    "tensors, or `return_tensors=None` for a list of per-clip arrays."
                )
            features = [row[:count] for row, count in zip(features, frame_counts, strict=True)]
            attention_mask = [row[:count] for row, count in zip(attention_mask, frame_counts, strict=True)]

        if return_type == TensorType.PYTORCH:
            data = {"input_features": features, "attention_mask": attention_mask}
        elif return_type == TensorType.NUMPY:
            data = {"input_features": features.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy()}
        else:
            data = {
                "input_features": [row.cpu().numpy() for row in features],
                "attention_mask": [row.cpu().numpy() for row in attention_mask],
            }
        if not return_attention_mask:
            del data["attention_mask"]
        return BatchFeature(data)

    @torch.no_grad()
    def featurize_padded(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The features of a batch that is already padded, on the batch's device, with no per-clip Python: what
        [`~BeatsFeatureExtractor.__call__`] computes after padding (so the same values on the same device).

        Args:
            waveforms (`torch.Tensor` of shape `(batch_size, num_samples)`):
                float32 mono 16 kHz clips right-padded with zeros.
            lengths (`torch.Tensor` of shape `(batch_size,)`):
                Samples of each clip, at least `min_num_samples`; not checked here.

        Returns:
            `(input_features, attention_mask)`: float32 `(batch_size, frames, feature_size)` and int32
            `(batch_size, frames)`, as `__call__` returns them.
        """
        features = kaldi_fbank(
            waveforms,
            num_mel_bins=self.feature_size,
            sampling_rate=self.sampling_rate,
            frame_length=self.frame_length,
            hop_length=self.hop_length,
        )
        features = (features - self.fbank_mean) / (2 * self.fbank_std)
        attention_mask = self.frame_mask(lengths.to(features.device), features.shape[1])
        features = features.masked_fill(~attention_mask[..., None].bool(), self.padding_value)
        return features, attention_mask

    def frame_mask(self, lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
        """int32 `(batch_size, num_frames)`: 1 for the Kaldi frames that lie inside each clip of `lengths` samples
        (`1 + (n - frame_length) // hop_length` of them, none for a clip shorter than one window), 0 for padding."""
        lengths = lengths.to(torch.long)
        valid_frames = torch.where(
            lengths >= self.frame_length, 1 + (lengths - self.frame_length) // self.hop_length, 0
        )
        frames = torch.arange(num_frames, device=lengths.device)
        return (frames[None, :] < valid_frames[:, None]).to(torch.int32)

    def _to_clips(self, raw_speech) -> list[torch.Tensor]:
        """Validate the input structure and dtypes; one 1-D float tensor per clip (numpy shares memory)."""
        if isinstance(raw_speech, (np.ndarray, torch.Tensor)):
            if raw_speech.ndim == 1:
                items = [raw_speech]
            elif raw_speech.ndim == 2:
                rows, columns = raw_speech.shape
                if columns <= 8 < rows:
                    raise ValueError(
                        f"Got a 2-D array of shape {tuple(raw_speech.shape)}, which looks like multi-channel audio "
                        "laid out as (samples, channels). BEATs takes mono audio: down-mix it first, e.g. "
                        "`audio.mean(axis=-1)`. A 2-D input is read as a (batch_size, num_samples) batch."
                    )
                items = list(raw_speech)
            else:
                raise ValueError(
                    f"Expected mono audio as a 1-D clip or a 2-D (batch_size, num_samples) batch, got shape "
                    f"{tuple(raw_speech.shape)}. Down-mix multi-channel audio to mono first, e.g. "
                    "`audio.mean(axis=0)`."
                )
        elif isinstance(raw_speech, (list, tuple)):
            if len(raw_speech) > 0 and all(isinstance(value, (int, float, np.number)) for value in raw_speech):
                items = [np.asarray(raw_speech, dtype=np.float32)]  # a single clip given as a list of numbers
            else:
                items = list(raw_speech)
        else:
            raise TypeError(
                "`raw_speech` must be a numpy array, a torch tensor or a list of them, got "
                f"{type(raw_speech).__name__}."
            )
        if not items:
            raise ValueError("`raw_speech` is an empty batch: pass at least one clip.")

        clips = []
        for index, item in enumerate(items):
            if isinstance(item, (list, tuple)):
                item = np.asarray(item, dtype=np.float32)
            if not isinstance(item, (np.ndarray, torch.Tensor)):
                raise TypeError(f"Clip {index} is a {type(item).__name__}; expected a numpy array or a torch tensor.")
            if isinstance(item, np.ndarray):
                if np.issubdtype(item.dtype, np.integer) or item.dtype == np.bool_:
                    raise ValueError(self._integer_message(index, str(item.dtype)))
                if not np.issubdtype(item.dtype, np.floating):
                    raise ValueError(f"Clip {index} has dtype {item.dtype}; expected real floating-point audio.")
                item = np.ascontiguousarray(item, dtype=np.float32)
                # torch cannot wrap a read-only array (e.g. decoded by FFmpeg in a pipeline) without a warning.
                item = torch.from_numpy(item if item.flags.writeable else item.copy())
            elif not item.is_floating_point():
                if item.is_complex():
                    raise ValueError(f"Clip {index} has dtype {item.dtype}; expected real floating-point audio.")
                raise ValueError(self._integer_message(index, str(item.dtype).replace("torch.", "")))
            if item.ndim == 2 and 1 in item.shape:
                item = item.reshape(-1)  # (1, samples) or (samples, 1): already mono
            if item.ndim != 1:
                raise ValueError(
                    f"Clip {index} has shape {tuple(item.shape)}, but each clip must be 1-D mono audio. Down-mix "
                    "multi-channel audio to mono first, e.g. `audio.mean(axis=0)` for (channels, samples)."
                )
            if item.shape[0] == 0:
                raise ValueError(f"Clip {index} is empty (0 samples).")
            clips.append(item)
        return clips

    @staticmethod
    def _integer_message(index: int, dtype: str) -> str:
        return (
            f"Clip {index} has integer dtype {dtype}, but BEATs expects float audio in [-1, 1]. Convert PCM first, "
            "e.g. `audio.astype(np.float32) / 32768` for int16 (`/ 2147483648` for int32)."
        )

    def _check_values(self, waveforms: torch.Tensor) -> None:
        finite = torch.isfinite(waveforms).all(dim=1)
        peaks = waveforms.abs().amax(dim=1)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten().tolist()
            raise ValueError(f"Clip {bad[0]} contains NaN or Inf values (clips {bad} are affected).")
        loud = torch.nonzero(peaks > _SUSPICIOUS_PEAK).flatten().tolist()
        if loud:
            logger.warning(
                f"Clip {loud[0]} peaks at {peaks[loud[0]].item():.1f}: BEATs expects float audio in [-1, 1] (it "
                "scales by 2**15 itself). If this is integer PCM stored as float, divide by 32768 first."
            )


__all__ = ["BeatsFeatureExtractor"]
