"""Long recordings with the defaults: `beats-hf embed` and `embed_long_audio` against one unchunked forward.

A 10-minute recording of real instrument samples (General MIDI phrases rendered by fluidsynth with the FluidR3 GM
soundfont, changing instrument every few seconds, with drums and pauses; a generated signal when fluidsynth or the
soundfont is missing) is embedded with the base model, with nothing but the defaults:
  * `beats-hf embed --model MODEL --data FOLDER --output_dir OUT` on a folder holding the recording as a WAV file
    (the whole command: model loading, decoding, embedding, writing), and with `--pooling frequency_bands`;
  * `embed_long_audio(model, feature_extractor, waveform)` (10 s windows every 8 s, 4 windows per batch);
  * for contrast, one forward over the whole recording (what `beats-hf embed --no_chunking` does), whose attention
    is quadratic in the length.
Each length (1, 2, 5, 10 min; 0.5, 1, 2 min unchunked) runs once in its own subprocess, which reports its peak
resident memory and its wall time. Then, in this process, the chunked path and the unchunked forward are timed
alternately on 1 minute, and their outputs compared.

    python benchmarks/long_audio.py [--threads 2] [--chunked-minutes 1 2 5 10] [--bands-minutes 1 2 5 10]
        [--unchunked-minutes 0.5 1 2]
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import (
    base_parser,
    machine_description,
    measure_peak_memory,
    memory_in_subprocess,
    paired_ratio,
    print_memory_result,
    print_table,
    set_threads,
    summarize,
    time_alternating,
    write_results,
)

from beats_hf import BeatsConfig, BeatsFeatureExtractor, BeatsModel
from beats_hf.embed import main as embed_command
from beats_hf.long_audio import embed_long_audio
from beats_hf.modeling_beats import pool_frequency_bands

SAMPLING_RATE = 16000
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
RECORDING = Path(tempfile.gettempdir()) / "beats_hf_benchmark_recording_10min.npy"


def render_recording(minutes: float = 10.0, seed: int = 0) -> tuple[np.ndarray, str]:
    """(mono float32 audio at 16 kHz, description), cached in the temp folder."""
    if RECORDING.exists():
        return np.load(RECORDING), "fluidsynth FluidR3 GM phrases (cached)"
    fluidsynth = shutil.which("fluidsynth")
    if fluidsynth is None or not SOUNDFONT.is_file():
        return generated_signal(minutes, seed), "generated signal (no fluidsynth or soundfont)"
    from demo.corpus import midi_file

    rng = np.random.default_rng(seed)
    events, tick, end = [], 0, int(minutes * 60_000)  # one tick = 1 ms
    while tick < end:
        program = int(rng.integers(0, 112))
        events.append((tick, 0, bytes([0xC0, program])))
        phrase_end = min(end, tick + int(rng.integers(3_000, 12_000)))
        drums = rng.random() < 0.4
        while tick < phrase_end:
            length = int(rng.choice([125, 250, 500, 1000]))
            pitch = int(rng.integers(40, 84))
            events.append((tick, 2, bytes([0x90, pitch, int(rng.integers(50, 120))])))
            events.append((tick + length, 1, bytes([0x80, pitch, 0])))
            if drums and tick % 500 < 250:
                drum = int(rng.choice([35, 38, 42, 46, 49]))
                events.append((tick, 2, bytes([0x99, drum, 100])))
                events.append((tick + 100, 1, bytes([0x89, drum, 0])))
            tick += length
        events.append((tick, 0, bytes([0xB0, 123, 0])))  # all notes off
        tick += int(rng.choice([0, 0, 500, 2_000]))  # sometimes a pause
    events.sort(key=lambda event: (event[0], event[1]))
    with tempfile.TemporaryDirectory(prefix="beats_long_audio_") as scratch:
        midi_path, raw_path = Path(scratch) / "recording.mid", Path(scratch) / "recording.raw"
        midi_path.write_bytes(midi_file([(at, message) for at, _, message in events], end_tick=end))
        command = [fluidsynth, "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.5", "-r", str(SAMPLING_RATE), "-T", "raw",
                   "-O", "float", "-E", "little", "-F", str(raw_path), str(SOUNDFONT), str(midi_path)]
        subprocess.run(command, capture_output=True, check=True)
        audio = np.fromfile(raw_path, dtype="<f4").reshape(-1, 2).mean(axis=1)
    audio = audio[: int(minutes * 60 * SAMPLING_RATE)]
    audio = (audio / max(1e-6, float(np.abs(audio).max())) * 0.9).astype(np.float32)
    np.save(RECORDING, audio)
    return audio, "fluidsynth FluidR3 GM phrases"


def generated_signal(minutes: float, seed: int) -> np.ndarray:
    """Chirps, tones and noise bursts changing every second."""
    rng = np.random.default_rng(seed)
    second = np.arange(SAMPLING_RATE) / SAMPLING_RATE
    pieces = []
    for _ in range(int(minutes * 60)):
        kind = rng.integers(3)
        if kind == 0:
            piece = np.sin(2 * np.pi * rng.uniform(100, 2000) * second)
        elif kind == 1:
            start, stop = rng.uniform(100, 4000, size=2)
            piece = np.sin(2 * np.pi * (start * second + (stop - start) * second**2 / 2))
        else:
            piece = rng.standard_normal(SAMPLING_RATE) * np.exp(-5 * second)
        pieces.append(0.3 * piece)
    return np.concatenate(pieces).astype(np.float32)


def load_model() -> BeatsModel:
    torch.manual_seed(0)
    config = BeatsConfig()
    config._attn_implementation = "sdpa"
    return BeatsModel(config).eval()


def write_wav(path: Path, audio: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(SAMPLING_RATE)
        handle.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


def unchunked(model, feature_extractor, audio: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clip embedding, per-row vectors, frequency-band statistics) of one forward over the whole recording."""
    inputs = feature_extractor(audio, sampling_rate=SAMPLING_RATE, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(inputs["input_features"]).last_hidden_state
    bands = pool_frequency_bands(hidden, None, 8)[0]
    return hidden[0].mean(0), hidden[0].view(-1, 8, hidden.shape[-1]).mean(1), bands


COMMANDS = {"embed": [], "embed_bands": ["--pooling", "frequency_bands"]}


def run_one(variant: str, args) -> dict:
    """One length in this (fresh) process: peak memory and wall time."""
    mode, minutes = variant.split(":")
    audio, _ = render_recording()
    audio = audio[: int(float(minutes) * 60 * SAMPLING_RATE)]
    scratch = Path(tempfile.mkdtemp(prefix="beats_long_audio_"))
    try:
        if mode in COMMANDS:  # the whole command, model loading included
            write_wav(scratch / "audio" / "recording.wav", audio)
            argv = ["--model", args.model_dir, "--data", str(scratch / "audio"), "--output_dir", str(scratch / "out"),
                    *COMMANDS[mode]]

            def run():
                return embed_command(argv)

        else:
            model, feature_extractor = load_model(), BeatsFeatureExtractor()
            if mode == "chunked":

                def run():
                    return embed_long_audio(model, feature_extractor, audio)

            else:

                def run():
                    return unchunked(model, feature_extractor, audio)

        start = time.perf_counter()
        result = measure_peak_memory(run)
        result["seconds"] = round(time.perf_counter() - start, 2)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0], repeats=3)
    parser.add_argument("--chunked-minutes", type=float, nargs="*", default=[1, 2, 5, 10],
                        help="lengths for `beats-hf embed` and `embed_long_audio` with their defaults")
    parser.add_argument("--bands-minutes", type=float, nargs="*", default=[1, 2, 5, 10],
                        help="lengths for `beats-hf embed --pooling frequency_bands`")
    parser.add_argument("--unchunked-minutes", type=float, nargs="*", default=[0.5, 1, 2])
    parser.add_argument("--compare-minutes", type=float, default=1.0, help="length of the in-process comparison")
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)  # internal: the saved base model
    args = parser.parse_args()
    set_threads(args.threads)
    if args.memory_variant:
        print_memory_result(run_one(args.memory_variant, args))
        return 0

    audio, source = render_recording()
    print(f"recording: {len(audio) / SAMPLING_RATE / 60:.1f} min, {source}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="beats_long_audio_model_") as model_dir:
        load_model().save_pretrained(model_dir)
        BeatsFeatureExtractor().save_pretrained(model_dir)
        extra = ["--threads", str(args.threads), "--model-dir", model_dir]
        plan = [("embed", args.chunked_minutes), ("embed_bands", args.bands_minutes),
                ("chunked", args.chunked_minutes), ("unchunked", args.unchunked_minutes)]
        for mode, lengths in plan if not args.no_memory else []:
            for minutes in lengths:
                result = memory_in_subprocess(__file__, f"{mode}:{minutes:g}", extra)
                patches = int((minutes * 60 * SAMPLING_RATE - 2800) // 2560 + 1) * 8
                row = {"path": mode, "minutes": minutes, "patches": patches, **result}
                if "seconds" in result:
                    row["s_per_audio_min"] = result["seconds"] / minutes
                rows.append(row)
                print(f"  {mode} {minutes:g} min: {result}", flush=True)
    if rows:
        print_table(rows, ["path", "minutes", "patches", "peak_mb", "increment_mb", "seconds", "s_per_audio_min"],
                    f"Peak RSS and wall time per length (one run each, own process), {args.threads} threads")

    model, feature_extractor = load_model(), BeatsFeatureExtractor()
    clip = audio[: int(args.compare_minutes * 60 * SAMPLING_RATE)]
    runs = {
        "chunked": lambda: embed_long_audio(model, feature_extractor, clip),
        "unchunked": lambda: unchunked(model, feature_extractor, clip),
    }
    chunked_result, (clip_embedding, rows_unchunked, bands_unchunked) = runs["chunked"](), runs["unchunked"]()
    bands_chunked = embed_long_audio(model, feature_extractor, clip, pooling="frequency_bands").clip_embedding
    similarity = {
        "clip_embedding_cosine": F.cosine_similarity(chunked_result.clip_embedding, clip_embedding, dim=0).item(),
        "frame_cosine_mean": F.cosine_similarity(chunked_result.frame_embeddings, rows_unchunked, dim=1).mean().item(),
        "frequency_bands_cosine": F.cosine_similarity(bands_chunked, bands_unchunked, dim=0).item(),
    }
    times, _ = time_alternating(runs, repeats=args.repeats, warmup=0)
    comparison = [{"path": name, **summarize(times[name]), "paired_vs_chunked": paired_ratio(times, name, "chunked")}
                  for name in runs]
    print_table(comparison, ["path", "median_s", "min_s", "max_s", "paired_vs_chunked"],
                f"{args.compare_minutes:g} min recording, timed alternately in one process")
    print("chunked vs unchunked (different context, random weights): " +
          ", ".join(f"{key} = {value:.4f}" for key, value in similarity.items()))
    payload = {
        "machine": machine_description(args.threads),
        "setup": {"recording": source, "model": "BeatsConfig() defaults (base), random weights, sdpa, fp32",
                  "embed": "beats-hf embed --model MODEL --data FOLDER --output_dir OUT [--pooling frequency_bands]"
                           " (defaults: 10 s windows every 8 s, batch 8)",
                  "chunked": "embed_long_audio(model, feature_extractor, waveform) (defaults: 10 s windows every "
                             "8 s, batch 4)",
                  "unchunked": "one forward over the whole recording (beats-hf embed --no_chunking)"},
        "per_length": rows,
        "comparison": comparison,
        "similarity": similarity,
    }
    path = write_results("long_audio", payload, args.output)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
