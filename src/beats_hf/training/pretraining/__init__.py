"""BEATs pre-training: masking and the collator, masked audio modeling (`pretrain`), tokenizer distillation
(`distillation`, `train_tokenizer`), the EMA codebook (`quantization`) and the iterative loop (`iterate`)."""
