#!/usr/bin/env python
"""What one BEATs pre-training step costs, counted rather than timed: the input to docs/scaling.md.

    .venv/bin/python benchmarks/scaling.py [--seconds 10] [--mask_ratio 0.75]

For one clip of `--seconds` on the `base` preset (the released encoder, 12 x 768, with the 3-layer 512-wide label
predictor) it counts, with torch's `FlopCounterMode` (exact for the matrix products, convolutions and attention that
make up nearly all the work), the floating-point operations of

- the student's training step: encoder forward on the visible patches, label predictor forward on all patches, and
  the backward of both (counted too; convolutions, which the counter charges wrongly when grouped, at 2x their
  forward);
- the labels: the iteration-1 random projection, and a trained base-size acoustic tokenizer (iterations >= 2),
  forward only, on all patches;
- a tokenizer distillation step: teacher forward (no gradient) and student forward + backward;
- the Kaldi fbank of the clip (FFT counted as 5 N log2 N per frame, mel and log as products),

and it measures the size of what a checkpoint holds (weights with `save_pretrained`, AdamW's state with `torch.save`
after one optimizer step). Nothing here is timed, so the figures do not depend on the machine. Writes
benchmarks/results/scaling.json; docs/scaling.md turns them into step times and wall-clock times.
"""

import argparse
import json
import math
import os
import platform
import tempfile

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from beats_hf import (
    BeatsForAudioTokenization,
    BeatsForMaskedAudioModeling,
    BeatsRandomProjectionConfig,
    BeatsRandomProjectionForAudioTokenization,
    BeatsTokenizationConfig,
)
from beats_hf.feature_extraction_beats import num_frames
from beats_hf.training.pretraining.distillation import BeatsTokenizationDistillationModel, student_config_from_teacher
from beats_hf.training.pretraining.masking import random_masked_patches
from beats_hf.training.pretraining.pretrain import TOKENIZER_PRESETS, preset_config

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "scaling.json")


def counted(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def op_flops(counter: FlopCounterMode, op: str) -> int:
    return int(sum(value for name, value in counter.get_flop_counts().get("Global", {}).items() if str(name) == op))


def counted_backward(loss: torch.Tensor, forward_convolution: int) -> int:
    """The backward's operations. torch 2.13's counter charges a grouped convolution's backward as if it had one group
    (16x too much for the position convolution), so convolutions are charged as 2x their counted forward instead
    (gradients of the input and of the weight)."""
    with FlopCounterMode(display=False) as counter:
        loss.backward()
    return int(counter.get_total_flops()) - op_flops(counter, "aten.convolution_backward") + 2 * forward_convolution


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))


def fbank_flops(num_samples: int) -> int:
    """Framing, window and pre-emphasis (a few per sample), the 512-point real FFT (5 N log2 N / 2), power, 128 x 257
    mel products and the log, per frame."""
    frames = num_frames(num_samples)
    per_frame = 4 * 400 + 5 * 512 * math.log2(512) / 2 + 3 * 257 + 2 * 128 * 257 + 128
    return int(frames * per_frame)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--mask_ratio", type=float, default=0.75)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = preset_config("base", layerdrop=0.0)
    student = BeatsForMaskedAudioModeling(config).train()
    samples = int(args.seconds * 16000)
    frames = num_frames(samples)
    features = torch.randn(1, frames, config.num_mel_bins)
    num_patches = frames // config.patch_size * config.num_frequency_patches
    masked = torch.from_numpy(random_masked_patches(np.ones((1, num_patches), bool), args.mask_ratio,
                                                    np.random.default_rng(0)))
    labels = torch.randint(0, config.num_target_codes, (1, num_patches))

    flops = {}
    with FlopCounterMode(display=False) as counter:
        loss = student(features, bool_masked_pos=masked, labels=labels).loss
    forward = counter.get_flop_counts()
    flops["student_forward"] = int(counter.get_total_flops())
    flops["student_encoder_forward"] = int(sum(forward.get("BeatsForMaskedAudioModeling.beats", {}).values()))
    flops["student_predictor_forward"] = int(
        sum(forward.get("BeatsForMaskedAudioModeling.label_predictor", {}).values())
    )
    flops["student_backward"] = counted_backward(loss, op_flops(counter, "aten.convolution"))
    flops["student_step"] = flops["student_forward"] + flops["student_backward"]

    random_projection = BeatsRandomProjectionForAudioTokenization(
        BeatsRandomProjectionConfig(codebook_size=config.num_target_codes)
    )
    tokenizer_config = student_config_from_teacher(
        config, **TOKENIZER_PRESETS["base"], codebook_size=config.num_target_codes
    )
    tokenizer = BeatsForAudioTokenization(BeatsTokenizationConfig(**tokenizer_config.to_dict())).eval()
    with torch.no_grad():
        flops["labels_random_projection"] = counted(lambda: random_projection(features))
        flops["labels_acoustic_tokenizer"] = counted(lambda: tokenizer(features))

    distillation = BeatsTokenizationDistillationModel(tokenizer_config, teacher_hidden_size=config.hidden_size).train()
    teacher = student.beats.eval()
    with torch.no_grad():
        flops["distillation_teacher_forward"] = counted(lambda: teacher(features))
        targets = teacher(features).last_hidden_state
        # The first training forward initialises the codebook by k-means (once per run): not part of a step.
        warm = torch.randn(3, frames, config.num_mel_bins)
        distillation(input_features=warm, teacher_hidden_states=teacher(warm).last_hidden_state)
    with FlopCounterMode(display=False) as counter:
        output = distillation(input_features=features, teacher_hidden_states=targets)
    flops["distillation_student_forward"] = int(counter.get_total_flops())
    flops["distillation_student_backward"] = counted_backward(output.loss, op_flops(counter, "aten.convolution"))
    flops["distillation_step"] = (
        flops["distillation_teacher_forward"] + flops["distillation_student_forward"]
        + flops["distillation_student_backward"]
    )
    flops["fbank"] = fbank_flops(samples)

    sizes = {}
    with tempfile.TemporaryDirectory() as folder:
        student.save_pretrained(folder)
        sizes["student_weights_bytes"] = folder_bytes(folder)
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
        optimizer.step()
        torch.save(optimizer.state_dict(), os.path.join(folder, "optimizer.pt"))
        sizes["optimizer_state_bytes"] = os.path.getsize(os.path.join(folder, "optimizer.pt"))
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        sizes["tokenizer_weights_bytes"] = folder_bytes(folder)
    parameters = {
        "student": sum(p.numel() for p in student.parameters()),
        "student_encoder": sum(p.numel() for p in student.beats.parameters()),
        "acoustic_tokenizer": sum(p.numel() for p in tokenizer.parameters()),
    }

    result = {
        "clip_seconds": args.seconds, "mask_ratio": args.mask_ratio, "patches": num_patches,
        "visible_patches": int((~masked).sum()), "flops_per_clip": flops, "parameters": parameters,
        "checkpoint_sizes": sizes, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(result, handle, indent=2)
    width = max(map(len, flops))
    print(f"per {args.seconds:g} s clip, base preset, {int((~masked).sum())} of {num_patches} patches visible:")
    for name, value in flops.items():
        print(f"  {name:<{width}}  {value / 1e9:9.2f} GFLOP")
    for name, value in {**parameters, **sizes}.items():
        print(f"  {name:<{width}}  {value / 1e6:9.2f} M")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
