"""`beats-hf`: one command for the training, embedding and demo tools. Each sub-command lives in its own module
and parses its own arguments (`beats-hf SUBCOMMAND --help`).

An error ends a sub-command with one line on stderr (`beats-hf SUBCOMMAND: error: ...`) and exit code 1. The full
traceback is printed only with `--traceback` (anywhere on the command line) or `BEATS_HF_TRACEBACK=1`."""

import importlib
import os
import sys

# sub-command -> (module with a `main(argv)` function, one-line description)
SUBCOMMANDS = {
    "train-tokenizer": ("beats_hf.training.pretraining.train_tokenizer", "train an acoustic tokenizer by distillation"),
    "pretrain": ("beats_hf.training.pretraining.pretrain", "masked audio modeling with a frozen tokenizer"),
    "iterate": ("beats_hf.training.pretraining.iterate", "the iterative BEATs pre-training loop, iteration 1 to K"),
    "embed": ("beats_hf.embed", "clip and frame embeddings for a folder or dataset"),
    "pack-shards": ("beats_hf.pack_shards", "pack audio into tar shards for streamed training"),
    "evaluate": ("beats_hf.evaluation.evaluate", "frozen-encoder benchmark: probes of every layer of several models"),
}
TRACEBACK_FLAG, TRACEBACK_VARIABLE = "--traceback", "BEATS_HF_TRACEBACK"


def main(argv: list[str] | None = None) -> int:
    """Runs a sub-command and returns its exit code; errors propagate (for callers and tests). The console command is
    `run`, which turns them into one line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print("usage: beats-hf SUBCOMMAND [ARGS] [--traceback]\n\nsub-commands:")
        for name, (_, description) in SUBCOMMANDS.items():
            print(f"  {name:<16} {description}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown sub-command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


def run(argv: list[str] | None = None) -> int:
    """The `beats-hf` console command: `main`, with any error as one line on stderr and exit code 1."""
    argv = sys.argv[1:] if argv is None else list(argv)
    show_traceback = TRACEBACK_FLAG in argv or os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0")
    argv = [argument for argument in argv if argument != TRACEBACK_FLAG]
    try:
        return main(argv)
    except Exception as error:  # noqa: BLE001 - every failure becomes one line unless the traceback is asked for
        if show_traceback:
            raise
        command = f"beats-hf {argv[0]}" if argv else "beats-hf"
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"{command}: error: {message} (rerun with {TRACEBACK_FLAG} for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(run())
