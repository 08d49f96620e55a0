#!/usr/bin/env python
"""Fine-tune BEATs for audio classification with Trainer (single- or multi-label).

    python examples/run_audio_classification.py \
        --model_name_or_path OUT/iteration_2/ssl --dataset path/to/audiofolder \
        --output_dir finetuned --do_train --do_eval --learning_rate 5e-5 --num_train_epochs 10 \
        --per_device_train_batch_size 16 --eval_strategy epoch --save_strategy epoch --use_cpu

The dataset is an `audiofolder` (one sub-folder per class, `train/` and `test/` splits), a folder written by
`save_to_disk`, or a Hub dataset id with an audio column. Paper recipe: `--mixup_alpha 0.8 --time_mask_frames 192
--freq_mask_bins 48 --layer_decay 0.75`; linear probing: `--freeze_base_model`; multi-label (AudioSet-style, a list of
label indices per clip): `--multi_label` (metric: mAP). Works under `accelerate launch` unchanged. Rerunning the same
command resumes from the last complete checkpoint, refuses other settings (exit status 1) and does nothing once the run
has finished. Prints the evaluation metrics as one JSON line.
"""

import sys

import beats_hf  # noqa: F401  (registers the BEATs Auto classes)
from beats_hf.training.finetuning import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
