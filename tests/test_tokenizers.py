"""The two acoustic tokenizers: the converted official tokenizer against the official token ids
(tests/fixtures/official_tiny/), and the iteration-1 random-projection tokenizer (reproducible from its seed in any
process, saved and reloaded intact, spread over the codebook)."""

import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import load_reference, official_clip_features, official_padded_batch
from transformers import AutoModel

from beats_hf import (
    BeatsFeatureExtractor,
    BeatsForAudioTokenization,
    BeatsRandomProjectionConfig,
    BeatsRandomProjectionForAudioTokenization,
)
from beats_hf.audio_data import decode_audio
from beats_hf.feature_extraction_beats import num_frames
from conversion.beats_conversion import convert_checkpoint

pytestmark = pytest.mark.float_sensitive

SAMPLING_RATE = 16000
OFFICIAL_PATCHES_ALONE = [128, 48, 248]  # valid patches of the three reference clips, each run alone


# ---------------------------------------------------------------------------------------------------------------------
# Official tokenizer parity
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official_tokenizer():
    checkpoint, outputs = load_reference("tokenizer")
    return convert_checkpoint(checkpoint), outputs


def clips_of(reference_inputs) -> list[np.ndarray]:
    return [waveform[0].numpy() for waveform in reference_inputs["individual_waveforms"]]


def token_ids(model, **inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).token_ids


def assert_each_clip_matches_official(ids: torch.Tensor, outputs: dict) -> None:
    """Row i of a padded batch: the official ids of clip i alone on its valid patches, -100 on the rest."""
    for index, num_valid in enumerate(OFFICIAL_PATCHES_ALONE):
        expected = outputs[f"individual_{index}"]["labels_2d"][0]
        assert expected.shape[0] == num_valid
        assert torch.equal(ids[index, :num_valid], expected), index
        assert (ids[index, num_valid:] == -100).all(), index


def test_converted_tokenizer_is_the_tokenization_model(official_tokenizer):
    model, _ = official_tokenizer
    assert isinstance(model, BeatsForAudioTokenization)
    assert tuple(model.quantizer.codebook.shape) == (32, 16)


def test_unpadded_reference_fbank_gives_official_ids(official_tokenizer, reference_inputs):
    """The official fbank, no mask: single_unpadded, and batch_nomask (the padded batch read as signal)."""
    model, outputs = official_tokenizer
    single = reference_inputs["preprocess"]["single_unpadded"]["fbank"]
    result = model(input_features=single)
    assert result.patch_mask is None
    assert torch.equal(result.token_ids, outputs["single_unpadded"]["labels_2d"])
    batch = reference_inputs["preprocess"]["batch_padded"]["fbank"]
    assert torch.equal(token_ids(model, input_features=batch), outputs["batch_nomask"]["labels_2d"])


def test_each_clip_alone_gives_official_ids(official_tokenizer, reference_inputs):
    """Each reference clip alone, from its official fbank with an all-ones attention mask."""
    model, outputs = official_tokenizer
    for index in range(len(OFFICIAL_PATCHES_ALONE)):
        ids = token_ids(model, **official_clip_features(reference_inputs, index))
        assert (ids != -100).all(), index  # one clip: nothing is padding
        assert torch.equal(ids, outputs[f"individual_{index}"]["labels_2d"]), index


def test_padded_batch_gives_each_clips_own_official_ids(official_tokenizer, reference_inputs):
    """The official padded-batch fbank with the feature extractor's frame mask (each clip's own Kaldi frame count, not
    the official mask, which keeps a few padded frames): each clip's ids alone on its valid patches, -100 after."""
    model, outputs = official_tokenizer
    inputs = official_padded_batch(reference_inputs)
    clips = clips_of(reference_inputs)
    extracted = BeatsFeatureExtractor()(clips, sampling_rate=SAMPLING_RATE, return_tensors="pt")
    assert torch.equal(inputs["attention_mask"], extracted["attention_mask"])
    assert inputs["attention_mask"].sum(-1).tolist() == [num_frames(len(clip)) for clip in clips] == [268, 98, 498]
    result = model(**inputs)
    assert result.patch_mask.sum(-1).tolist() == OFFICIAL_PATCHES_ALONE
    assert torch.equal(result.token_ids == -100, ~result.patch_mask)
    assert_each_clip_matches_official(result.token_ids, outputs)


def test_padding_content_never_changes_the_ids(official_tokenizer, reference_inputs):
    """Loud noise instead of padding after each clip changes only padded frames: the ids of the valid patches stay
    the clip's own and the padded patches stay -100."""
    model, outputs = official_tokenizer
    inputs = official_padded_batch(reference_inputs)
    padded_frames = inputs["attention_mask"] == 0
    noisy = inputs["input_features"].clone()
    noisy[padded_frames] = 3 * torch.randn(int(padded_frames.sum()), noisy.shape[-1], generator=torch.manual_seed(0))
    ids = token_ids(model, input_features=noisy, attention_mask=inputs["attention_mask"])
    assert_each_clip_matches_official(ids, outputs)
    # Without the mask the noise is read as signal: the short clips then get ids on every patch.
    unmasked = token_ids(model, input_features=noisy)
    assert (unmasked != -100).all()


def test_official_padded_batch_ids_differ_from_single_clips():
    """Why the padded batch is compared with single clips: the official padded-batch labels of the two shorter clips
    differ from their labels alone (official padding quirk, spec §5); only the longest clip's agree."""
    _, outputs = load_reference("tokenizer")
    official_batch = outputs["batch_padded"]["labels_2d"]
    mismatches = [
        int((official_batch[i, :n] != outputs[f"individual_{i}"]["labels_2d"][0]).sum())
        for i, n in enumerate(OFFICIAL_PATCHES_ALONE)
    ]
    assert mismatches[0] > 0 and mismatches[1] > 0 and mismatches[2] == 0


def test_converted_tokenizer_save_and_auto_reload(official_tokenizer, reference_inputs, tmp_path):
    model, outputs = official_tokenizer
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert type(reloaded) is BeatsForAudioTokenization
    features = reference_inputs["preprocess"]["single_unpadded"]["fbank"]
    assert torch.equal(token_ids(reloaded, input_features=features), outputs["single_unpadded"]["labels_2d"])


# ---------------------------------------------------------------------------------------------------------------------
# Random-projection tokenizer (iteration 1)
# ---------------------------------------------------------------------------------------------------------------------


def generated_audio(seconds: float, seed: int) -> np.ndarray:
    """Varied synthetic sound: harmonic tones with vibrato and tremolo, a chirp, noise bursts, silences."""
    rng = np.random.default_rng(seed)
    time = np.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE
    audio = np.zeros_like(time)
    for start in np.arange(0.0, seconds, 0.5):
        segment = (time >= start) & (time < start + 0.5)
        kind = rng.integers(4)
        t = time[segment] - start
        if kind == 0:  # harmonic tone
            f0 = rng.uniform(80, 1000)
            vibrato = 1 + 0.02 * np.sin(2 * np.pi * rng.uniform(3, 7) * t)
            tone = sum(rng.uniform(0.2, 1) / k * np.sin(2 * np.pi * f0 * k * t * vibrato) for k in range(1, 9))
            audio[segment] = tone * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(1, 8) * t))
        elif kind == 1:  # chirp
            f_start, f_end = rng.uniform(100, 6000, size=2)
            audio[segment] = np.sin(2 * np.pi * (f_start * t + (f_end - f_start) * t**2))
        elif kind == 2:  # noise burst, low-passed by a moving average of random length
            noise = rng.standard_normal(t.size)
            width = int(rng.integers(1, 16))
            audio[segment] = np.convolve(noise, np.ones(width) / width, mode="same") * np.exp(-t * rng.uniform(1, 10))
        # kind 3: silence
    audio += 1e-3 * rng.standard_normal(time.size)
    return (0.5 * audio / np.abs(audio).max()).astype(np.float32)


@pytest.fixture(scope="module")
def features() -> dict[str, torch.Tensor]:
    clips = [generated_audio(4.0, seed=1), generated_audio(2.5, seed=2), generated_audio(1.0, seed=3)]
    return dict(BeatsFeatureExtractor()(clips, sampling_rate=SAMPLING_RATE, return_tensors="pt"))


def random_projection(seed: int, codebook_size: int = 1024) -> BeatsRandomProjectionForAudioTokenization:
    config = BeatsRandomProjectionConfig(codebook_size=codebook_size, seed=seed)
    return BeatsRandomProjectionForAudioTokenization(config)


_OTHER_PROCESS = textwrap.dedent(
    """
    import sys
    import torch
    from beats_hf import BeatsRandomProjectionConfig, BeatsRandomProjectionForAudioTokenization

    torch.manual_seed(999)  # a different global RNG state: the tokenizer must not depend on it
    torch.randn(12345)
    features = torch.load(sys.argv[1], weights_only=True)
    model = BeatsRandomProjectionForAudioTokenization(BeatsRandomProjectionConfig(seed=int(sys.argv[2])))
    with torch.no_grad():
        ids = model(**features).token_ids
    torch.save({"token_ids": ids, "codebook": model.codebook.detach(), "projection": model.projection.detach()},
               sys.argv[3])
    """
)


def test_random_projection_same_seed_same_ids_in_another_process(features, tmp_path):
    torch.save(features, tmp_path / "features.pt")
    (tmp_path / "other.py").write_text(_OTHER_PROCESS)
    subprocess.run(
        [sys.executable, str(tmp_path / "other.py"), str(tmp_path / "features.pt"), "1234", str(tmp_path / "out.pt")],
        check=True,
        timeout=300,
    )
    other = torch.load(tmp_path / "out.pt", weights_only=True)
    torch.manual_seed(5)
    model = random_projection(seed=1234)
    assert torch.equal(model.codebook, other["codebook"])
    assert torch.equal(model.projection, other["projection"])
    assert torch.equal(token_ids(model, **features), other["token_ids"])


def test_random_projection_codebook_is_unit_norm_and_frozen():
    model = random_projection(seed=0)
    torch.testing.assert_close(model.codebook.norm(dim=-1), torch.ones(1024))
    assert not any(parameter.requires_grad for parameter in model.parameters())


def test_random_projection_different_seeds_differ(features):
    first, second = random_projection(seed=0), random_projection(seed=1)
    assert not torch.equal(first.codebook, second.codebook)
    ids_first, ids_second = token_ids(first, **features), token_ids(second, **features)
    valid = ids_first != -100
    agreement = (ids_first[valid] == ids_second[valid]).float().mean().item()
    assert agreement < 0.1, agreement


def test_random_projection_save_and_auto_reload(features, tmp_path):
    model = random_projection(seed=77)
    model.save_pretrained(tmp_path)
    torch.manual_seed(0)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert type(reloaded) is BeatsRandomProjectionForAudioTokenization
    assert reloaded.config.seed == 77
    assert torch.equal(reloaded.codebook, model.codebook)
    assert torch.equal(reloaded.projection, model.projection)
    assert torch.equal(token_ids(reloaded, **features), token_ids(model, **features))


def test_random_projection_reload_reads_the_saved_tensors_not_the_seed(tmp_path):
    model = random_projection(seed=77)
    with torch.no_grad():
        model.codebook.copy_(model.codebook.roll(1, dims=0))
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert torch.equal(reloaded.codebook, model.codebook)
    assert not torch.equal(reloaded.codebook, random_projection(seed=77).codebook)


def test_random_projection_padded_batch_equals_each_clip_alone(features):
    """Each row's own frames, cut out of the padded batch, give the same ids alone: padding never reaches a valid
    patch. (The fbank's own batch invariance, to float rounding, is tested with the feature extractor.)"""
    model = random_projection(seed=3)
    batch = model(**features)
    clips = [generated_audio(4.0, seed=1), generated_audio(2.5, seed=2), generated_audio(1.0, seed=3)]
    for index, clip in enumerate(clips):
        frames = num_frames(len(clip))
        assert int(features["attention_mask"][index].sum()) == frames
        alone = token_ids(model, input_features=features["input_features"][index : index + 1, :frames])[0]
        num_valid = int(batch.patch_mask[index].sum())
        assert num_valid == alone.shape[0] == frames // 16 * 8
        assert torch.equal(batch.token_ids[index, :num_valid], alone)
        assert (batch.token_ids[index, num_valid:] == -100).all()


def distinct_codes(model, waveform: np.ndarray) -> tuple[int, int]:
    """(distinct codes, patches) of one clip."""
    ids = token_ids(model, **BeatsFeatureExtractor()(waveform, sampling_rate=SAMPLING_RATE, return_tensors="pt"))
    return int(ids.unique().numel()), int(ids.numel())


def test_random_projection_spreads_generated_audio_over_many_codes():
    used, patches = distinct_codes(random_projection(seed=0), generated_audio(20.0, seed=11))
    print(f"random projection, generated audio: {used} of 1024 codes on {patches} patches")
    assert used >= 150, (used, patches)


ESPEAK = shutil.which("espeak-ng")


@pytest.mark.skipif(ESPEAK is None, reason="needs espeak-ng (apt-get install -y espeak-ng)")
def test_random_projection_spreads_speech_over_many_codes(tmp_path):
    text = (
        "Audio pre-training with acoustic tokenizers. The quick brown fox jumps over the lazy dog, "
        "while seven singing birds whistle softly in the cold morning air. How many codes does speech use?"
    )
    waveforms = []
    for voice in ("en", "en+f3", "de", "fr"):
        path = tmp_path / f"{voice}.wav"
        subprocess.run([ESPEAK, "-v", voice, "-w", str(path), text], check=True, timeout=60)
        waveforms.append(decode_audio(str(path)))  # espeak writes 22.05 kHz: resampled to 16 kHz
    used, patches = distinct_codes(random_projection(seed=0), np.concatenate(waveforms))
    print(f"random projection, espeak-ng speech: {used} of 1024 codes on {patches} patches")
    assert used >= 150, (used, patches)
