#!/usr/bin/env python
"""The demo's pre-training step in float32 against bfloat16 autocast, on the CPU.

    .venv/bin/python benchmarks/demo_pretraining_bf16.py [--threads 2] [--repeats 7]

`make demo` turns on bf16 autocast where `beats_hf.precision.bf16_is_fast` finds bf16 matrix units (AVX512-BF16 or
AMX on a CPU). This measures what that buys: one full optimisation step (forward, backward, AdamW) of the `small`
pre-training preset on the demo's batch (16 clips x 2 s, 75 % of the patches masked, random labels; layerdrop off so
that every step does the same work), fp32 and autocast timed alternately in one process. On a CPU without bf16 units
autocast is emulated and the ratio is above 1, which is why the demo checks first.
"""

import numpy as np
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

from beats_hf import BeatsForMaskedAudioModeling
from beats_hf.precision import bf16_is_fast
from beats_hf.training.pretraining.masking import random_masked_patches
from beats_hf.training.pretraining.pretrain import preset_config

BATCH_SIZE = 16
FRAMES = 198  # 2 s of 16 kHz audio


def main() -> None:
    args = base_parser(__doc__.split("\n\n")[0], repeats=7).parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    config = preset_config("small", layerdrop=0.0)
    model = BeatsForMaskedAudioModeling(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    num_patches = FRAMES // 16 * 8
    features = torch.randn(BATCH_SIZE, FRAMES, 128)
    masked = torch.from_numpy(random_masked_patches(np.ones((BATCH_SIZE, num_patches), bool), 0.75,
                                                 np.random.default_rng(0)))
    labels = torch.randint(0, config.num_target_codes, (BATCH_SIZE, num_patches))

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(features, bool_masked_pos=masked, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    times, _ = time_alternating({"fp32": lambda: step(False), "bf16_autocast": lambda: step(True)},
                                repeats=args.repeats, warmup=args.warmup)
    rows = [{"precision": name, **summarize(runs), "paired_vs_fp32": paired_ratio(times, name, "fp32")}
            for name, runs in times.items()]
    print_table(rows, ["precision", "median_s", "min_s", "paired_vs_fp32"],
                f"small preset pre-training step, {BATCH_SIZE} x 2 s, {args.threads} threads "
                f"(bf16_is_fast: {bf16_is_fast(on_cpu=True)})")
    payload = {"machine": machine_description(args.threads), "bf16_is_fast": bf16_is_fast(on_cpu=True),
               "batch_size": BATCH_SIZE, "clip_seconds": 2.0, "preset": "small", "rows": rows}
    print(f"-> {write_results('demo_pretraining_bf16', payload, args.output)}")


if __name__ == "__main__":
    main()
