"""Labelling throughput of the two tokenizers (base size) on 10 s clips: how many clips per second get their patch
labels for masked audio modeling.

Both start from precomputed fbank features (the pre-training collator computes them once for the student too), in
inference mode, fp32; the acoustic tokenizer also under bfloat16 autocast. Timed alternately in one process.

    python benchmarks/tokenizer_labelling.py [--threads 2] [--repeats 5] [--batch 4] [--projection-batch 32]
"""

import sys

import torch
from common import (
    base_parser,
    machine_description,
    print_table,
    set_threads,
    summarize,
    time_alternating,
    write_results,
)

from beats_hf import (
    BeatsForAudioTokenization,
    BeatsRandomProjectionConfig,
    BeatsRandomProjectionForAudioTokenization,
    BeatsTokenizationConfig,
)


def features(batch: int, seconds: float) -> tuple[torch.Tensor, torch.Tensor]:
    num_frames = 1 + (int(seconds * 16000) - 400) // 160
    values = torch.randn(batch, num_frames, 128, generator=torch.Generator().manual_seed(0))
    return values, torch.ones(batch, num_frames, dtype=torch.int32)


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4, help="clips per call of the acoustic tokenizer")
    parser.add_argument("--projection-batch", type=int, default=32, help="clips per call of the random projection")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    set_threads(args.threads)

    torch.manual_seed(0)
    projection = BeatsRandomProjectionForAudioTokenization(BeatsRandomProjectionConfig()).eval()
    config = BeatsTokenizationConfig()
    config._attn_implementation = "sdpa"
    acoustic = BeatsForAudioTokenization(config).eval()
    projection_inputs = features(args.projection_batch, args.seconds)
    acoustic_inputs = features(args.batch, args.seconds)

    def random_projection():
        with torch.inference_mode():
            return projection(*projection_inputs).token_ids

    def acoustic_fp32():
        with torch.inference_mode():
            return acoustic(*acoustic_inputs).token_ids

    def acoustic_bf16():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return acoustic(*acoustic_inputs).token_ids

    runs = {"random_projection": random_projection, "acoustic_fp32": acoustic_fp32,
            "acoustic_autocast_bf16": acoustic_bf16}
    clips = {"random_projection": args.projection_batch, "acoustic_fp32": args.batch,
             "acoustic_autocast_bf16": args.batch}
    agreement = (acoustic_bf16() == acoustic_fp32()).float().mean().item()
    times, _ = time_alternating(runs, repeats=args.repeats, warmup=args.warmup)
    rows = []
    for name in runs:
        stats = summarize(times[name])
        rows.append({"tokenizer": name, "clips_per_call": clips[name], **stats,
                     "clips_per_s": clips[name] / stats["median_s"],
                     "patches_per_s": clips[name] * projection_inputs[0].shape[1] // 16 * 8 / stats["median_s"]})

    title = f"Tokenizer labelling, {args.seconds:g} s clips, {args.threads} threads"
    print_table(rows, ["tokenizer", "clips_per_call", "median_s", "min_s", "clips_per_s", "patches_per_s"], title)
    print(f"acoustic tokenizer: share of patch labels equal under bf16 autocast and fp32 = {agreement:.3f} "
          "(random weights: near-ties are common)")
    payload = {
        "machine": machine_description(args.threads),
        "setup": {"seconds": args.seconds, "repeats": args.repeats, "warmup": args.warmup,
                  "config": "BeatsTokenizationConfig() / BeatsRandomProjectionConfig() defaults, random weights"},
        "rows": rows,
        "checks": {"acoustic_bf16_label_agreement": agreement},
    }
    path = write_results("tokenizer_labelling", payload, args.output)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
