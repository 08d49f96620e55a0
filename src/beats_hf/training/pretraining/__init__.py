"""BEATs pre-training: masking and the collator, masked audio modeling (`pretrain`), tokenizer distillation
(`distillation`, `train_tokenizer`), the EMA codebook (`quantization`) and the iterative loop (`iterate`)."""


def __getattr__(name: str):
    # `from beats_hf.pretraining import tokenizer_training`: the old name of `distillation`, with a warning.
    from ..._moved_modules import old_submodule

    return old_submodule("beats_hf.pretraining", name)
