#!/usr/bin/env python
"""Pre-train BEATs by masked audio modeling with a frozen acoustic tokenizer (one iteration of the paper's loop).

    python examples/run_pretraining.py --data path/to/audio_folder --output_dir ssl \
        --tokenizer random_projection --model_preset small --crop_seconds 10 --mask_ratio 0.75 \
        --max_steps 20000 --per_device_train_batch_size 32 --learning_rate 5e-4 --warmup_steps 2000 \
        --weight_decay 0.01 --logging_steps 50 --save_steps 1000 --dataloader_num_workers 4

`--tokenizer` is `random_projection` (iteration 1) or a saved tokenizer folder (`beats-hf train-tokenizer`). The data
is a folder of audio files, a saved dataset or a Hub dataset id. Rerunning with the same `--output_dir` resumes from
the last complete checkpoint, refuses other settings (exit status 1) and does nothing once the run has finished. On
several GPUs (bf16):

    accelerate launch --config_file examples/accelerate_configs/ddp_multi_gpu.yaml examples/run_pretraining.py ...

`beats-hf pretrain` takes the same arguments; `beats-hf iterate` chains tokenizer and pre-training iterations.
"""

import json
import sys

from transformers import HfArgumentParser, TrainingArguments

from beats_hf.pretraining.pretrain import PretrainingArguments, run_pretraining
from beats_hf.run_folder import RunFolderError, refuse


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((PretrainingArguments, TrainingArguments))
    args, training_args = parser.parse_args_into_dataclasses(args=argv)
    try:
        metrics = run_pretraining(args, training_args)
    except RunFolderError as error:
        sys.exit(refuse("run_pretraining.py", error, training_args.process_index))
    if training_args.process_index == 0:
        summary = {key: value for key, value in sorted(metrics.items()) if key.startswith(("last_", "train_"))}
        print(json.dumps(summary))
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
