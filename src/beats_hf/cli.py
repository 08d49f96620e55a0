"""`beats-hf`: one command for the training, embedding and demo tools. Each sub-command lives in its own module
and parses its own arguments (`beats-hf SUBCOMMAND --help`)."""

import importlib
import sys

# sub-command -> (module with a `main(argv)` function, one-line description)
SUBCOMMANDS = {
    "train-tokenizer": ("beats_hf.pretraining.train_tokenizer", "train an acoustic tokenizer by distillation"),
    "pretrain": ("beats_hf.pretraining.pretrain", "masked audio modeling with a frozen tokenizer"),
    "iterate": ("beats_hf.pretraining.iterate", "the iterative BEATs pre-training loop, iteration 1 to K"),
    "embed": ("beats_hf.embed", "clip and frame embeddings for a folder or dataset"),
    "demo": ("beats_hf.demo.run", "the end-to-end demo on real recorded instrument audio"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print("usage: beats-hf SUBCOMMAND [ARGS]\n\nsub-commands:")
        for name, (_, description) in SUBCOMMANDS.items():
            print(f"  {name:<16} {description}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown sub-command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
