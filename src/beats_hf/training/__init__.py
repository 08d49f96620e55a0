"""The training kit: everything that trains or fine-tunes a BEATs model, on `Trainer` and Accelerate.

- `run_folder`: the output folder of a run (complete checkpoints, recorded settings, resume, finished);
- `driver`: the one skeleton every training command runs on (arguments, output-dir checks, banner, results files);
- `finetuning` and `linear_probe`: audio classification with the paper's recipe, LP-FT heads;
- `metrics`: the evaluation metrics, shipped as local `evaluate` modules;
- `pretraining/`: masking, the collator, masked audio modeling (`pretrain`), tokenizer distillation
  (`distillation`, `train_tokenizer`), the codebook (`quantization`) and the iterative loop (`iterate`).

The model files (`beats_hf.configuration_beats`, `modeling_beats`, `feature_extraction_beats`) and the model wing's
tools (`audio_data`, `embed`, `long_audio`) never import it.
"""
