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

import sys

from beats_hf.training.pretraining.pretrain import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
