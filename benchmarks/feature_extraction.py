"""Feature extraction speed: the batched torch Kaldi fbank against a one-clip-at-a-time loop of the same code.

Two levels: the bare `kaldi_fbank` function on a `(32, 160000)` batch (on CPU it works through blocks of whole clips
of at most 4,096 frames, sized for the caches) against 32 calls on `(1, 160000)`, against 8 calls on sub-batches of 4
clips and against one unblocked pass over the whole batch (what it did before, for the record); and the full
`BeatsFeatureExtractor.__call__` (validation, padding, normalisation, mask) on a list of 32 clips against 32 calls on
one clip each. On a GPU (when `torch.cuda.is_available()`) the same runs with `device="cuda"`.

    python benchmarks/feature_extraction.py [--threads 2] [--repeats 7] [--clips 32] [--seconds 10]
"""

import sys

import torch
from common import (
    base_parser,
    machine_description,
    paired_ratio,
    print_table,
    set_threads,
    summarize,
    time_alternating,
    write_results,
)

from beats_hf import BeatsFeatureExtractor
from beats_hf.feature_extraction_beats import _fbank_block, _fbank_constants, kaldi_fbank, num_frames


def variants(waveforms: torch.Tensor, device: str) -> dict:
    feature_extractor = BeatsFeatureExtractor()
    on_device = waveforms.to(device)
    clips = list(waveforms)  # CPU clips, as they come from a data loader

    def fbank_batched():
        with torch.no_grad():
            return kaldi_fbank(on_device)

    def fbank_loop():
        with torch.no_grad():
            return torch.cat([kaldi_fbank(row[None]) for row in on_device])

    def fbank_sub_batches():
        with torch.no_grad():
            return torch.cat([kaldi_fbank(on_device[start : start + 4]) for start in range(0, len(on_device), 4)])

    def fbank_single_pass():
        constants = _fbank_constants(128, 16000, 400, on_device.device, on_device.dtype)
        frames = num_frames(on_device.shape[1])
        with torch.no_grad():
            return _fbank_block(on_device, frames, 2.0**15, 400, 160, *constants)

    def extractor_batched():
        return feature_extractor(clips, sampling_rate=16000, return_tensors="pt", device=device)["input_features"]

    def extractor_loop():
        return torch.cat([
            feature_extractor(clip, sampling_rate=16000, return_tensors="pt", device=device)["input_features"]
            for clip in clips
        ])

    return {"fbank_batched": fbank_batched, "fbank_loop": fbank_loop, "fbank_sub_batches": fbank_sub_batches,
            "fbank_single_pass": fbank_single_pass,
            "extractor_batched": extractor_batched, "extractor_loop": extractor_loop}


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0], repeats=7)
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    set_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    waveforms = 0.1 * torch.randn(args.clips, int(args.seconds * 16000), generator=generator)

    rows, checks = [], {}
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        runs = variants(waveforms, device)
        with torch.no_grad():
            checks[device] = {
                "fbank_loop_vs_batched_max_abs": (runs["fbank_loop"]() - runs["fbank_batched"]()).abs().max().item(),
                "fbank_sub_batches_vs_batched_max_abs":
                    (runs["fbank_sub_batches"]() - runs["fbank_batched"]()).abs().max().item(),
                "fbank_single_pass_vs_batched_max_abs":
                    (runs["fbank_single_pass"]() - runs["fbank_batched"]()).abs().max().item(),
                "extractor_loop_vs_batched_max_abs":
                    (runs["extractor_loop"]() - runs["extractor_batched"]()).abs().max().item(),
            }
        times, _ = time_alternating(runs, repeats=args.repeats, warmup=args.warmup)
        for name in runs:
            stats = summarize(times[name])
            baseline = "fbank_batched" if name.startswith("fbank") else "extractor_batched"
            rows.append({"device": device, "variant": name, **stats,
                         "clips_per_s": args.clips / stats["median_s"],
                         "paired_vs_batched": paired_ratio(times, name, baseline)})

    title = f"Feature extraction, {args.clips} clips x {args.seconds:g} s, {args.threads} threads"
    print_table(rows, ["device", "variant", "median_s", "min_s", "clips_per_s", "paired_vs_batched"], title)
    for device, values in checks.items():
        print(f"{device}: " + ", ".join(f"{key} = {value:.2e}" for key, value in values.items()))
    payload = {
        "machine": machine_description(args.threads),
        "setup": {"clips": args.clips, "seconds": args.seconds, "repeats": args.repeats, "warmup": args.warmup},
        "rows": rows,
        "checks": checks,
    }
    path = write_results("feature_extraction", payload, args.output)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
