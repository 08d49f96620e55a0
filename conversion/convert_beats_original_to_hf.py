"""Convert official BEATs checkpoints (microsoft/unilm) to transformers folders, and optionally push them to the Hub.

    python conversion/convert_beats_original_to_hf.py --checkpoint_path BEATs_iter3_plus_AS2M.pt \\
        --pytorch_dump_folder_path beats-iter3-plus-as2m [--push_to_hub NAMESPACE/REPO [--private]
        [--replace_hub_files]]
    python conversion/convert_beats_original_to_hf.py --checkpoint_dir official/ --pytorch_dump_folder_path out/ \\
        [--push_to_hub NAMESPACE [--private] [--replace_hub_files]]

Pre-trained files become BeatsModel, fine-tuned ones BeatsForAudioClassification (AudioSet names in the checkpoint's
own label order, multi-label), tokenizers BeatsForAudioTokenization. Each output folder is a complete Hub repository
(see conversion/publishing.py). In batch mode every *.pt / *.pth file of the folder goes to OUT/<hub name>
(conversion/checkpoints.py: hub_name), a bad file is reported and skipped, and a summary table ends the run.
An existing output folder is replaced only by a fully successful conversion, and only if it is empty or holds nothing
but the unchanged files of an earlier conversion (its beats_hf_manifest.json records them); otherwise the file fails
with a message naming what is not the converter's. A push keeps the repository files the converter did not write
unless --replace_hub_files is given. Exit status: 0 when every file converted (and pushed), 1 otherwise.
"""

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `conversion` package importable from the repo root
    _REPO_ROOT = str(Path(__file__).resolve().parents[1])
    if _REPO_ROOT not in sys.path:
        sys.path.insert(0, _REPO_ROOT)

import huggingface_hub  # noqa: E402
import transformers  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from beats_hf import BeatsFeatureExtractor  # noqa: E402
from conversion.beats_conversion import (  # noqa: E402
    ConversionError,
    ConversionWarning,
    checkpoint_kind,
    convert_checkpoint,
    file_sha256,
    load_official_checkpoint,
    self_check,
)
from conversion.checkpoints import facts_for, hub_name  # noqa: E402
from conversion.publishing import PublishError, push_folder, render_model_card, save_folder  # noqa: E402

CHECKPOINT_SUFFIXES = (".pt", ".pth")


@dataclass
class Converted:
    kind: str
    output_dir: Path
    self_check: str
    warnings: list[str]


def convert_file(checkpoint_path: str | Path, output_dir: str | Path, model_id: str | None = None) -> Converted:
    """Convert one official file into a complete repository folder; raises ConversionError with the reason.

    `model_id` is the repository id the model card's usage snippet loads; without one the snippet loads the output
    folder by its name (relative to the folder above it: a card holds no absolute local path).
    """
    checkpoint_path, output_dir = Path(checkpoint_path), Path(output_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConversionWarning)
        checkpoint = load_official_checkpoint(checkpoint_path)
        model = convert_checkpoint(checkpoint)
        kind = checkpoint_kind(checkpoint)
        feature_extractor = BeatsFeatureExtractor()
        check = self_check(model, feature_extractor)
        card = render_model_card(
            model,
            kind,
            file_name=checkpoint_path.name,
            sha256=file_sha256(checkpoint_path),
            model_id=model_id or output_dir.resolve().name,
            self_check_summary=check.summary,
            facts=facts_for(checkpoint_path.name),
            local=model_id is None,
        )
        save_folder(output_dir, model, feature_extractor, kind, card, check)
    # Only our own warnings are reported; library deprecation noise during save/load is dropped.
    messages = [str(w.message) for w in caught if issubclass(w.category, ConversionWarning)]
    return Converted(kind=kind, output_dir=output_dir, self_check=check.summary, warnings=messages)


def _convert_one(args: argparse.Namespace) -> int:
    source = Path(args.checkpoint_path)
    try:
        result = convert_file(source, args.pytorch_dump_folder_path, model_id=args.push_to_hub)
    except ConversionError as error:
        print(f"error: {source}: {error}", file=sys.stderr)
        return 1
    for message in result.warnings:
        print(f"warning: {source}: {message}", file=sys.stderr)
    print(f"converted {source.name} ({result.kind}) -> {result.output_dir}; self-check: {result.self_check}")
    if args.push_to_hub:
        try:
            pushed = push_folder(result.output_dir, args.push_to_hub, args.private, args.replace_hub_files)
        except PublishError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"pushed to {pushed.url}")
        if pushed.deleted:
            print(f"deleted from the repository: {', '.join(pushed.deleted)}")
        if pushed.kept:
            print("kept in the repository (not written by beats_hf, or changed since; --replace_hub_files deletes "
                  f"them): {', '.join(pushed.kept)}")  # fmt: skip
    return 0


def _print_summary(rows: list[tuple[str, str, str, str]]) -> None:
    header = ("file", "kind", "output", "status")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[3])


def _convert_folder(args: argparse.Namespace) -> int:
    checkpoint_dir, output_root = Path(args.checkpoint_dir), Path(args.pytorch_dump_folder_path)
    if not checkpoint_dir.is_dir():
        print(f"error: {checkpoint_dir}: not a folder.", file=sys.stderr)
        return 1
    if args.push_to_hub and "/" in args.push_to_hub:
        namespace = args.push_to_hub
        print(f"error: in batch mode --push_to_hub takes a namespace (user or organisation), got {namespace!r}.",
              file=sys.stderr)  # fmt: skip
        return 1
    files = sorted(path for path in checkpoint_dir.iterdir() if path.suffix in CHECKPOINT_SUFFIXES and path.is_file())
    if not files:
        print(f"error: {checkpoint_dir}: no {' / '.join(CHECKPOINT_SUFFIXES)} files.", file=sys.stderr)
        return 1
    rows, taken, failures = [], {}, 0
    for path in tqdm(files, desc="Converting", unit="file"):
        name = hub_name(path.name)
        output_dir = output_root / name
        repo_id = f"{args.push_to_hub}/{name}" if args.push_to_hub else None
        kind, status = "-", "ok"
        try:
            if name in taken:
                raise ConversionError(f"its Hub name {name!r} is also the name of {taken[name]}.")
            taken[name] = path.name
            result = convert_file(path, output_dir, model_id=repo_id)
            kind = result.kind
            for message in result.warnings:
                tqdm.write(f"warning: {path.name}: {message}", file=sys.stderr)
            if result.warnings:
                status += f" ({len(result.warnings)} warning{'s' if len(result.warnings) > 1 else ''})"
            if repo_id:
                pushed = push_folder(output_dir, repo_id, args.private, args.replace_hub_files)
                status += f", pushed to {pushed.url}"
                if pushed.kept:
                    kept = ", ".join(pushed.kept)
                    status += f" (kept {len(pushed.kept)} files not written by beats_hf or changed since: {kept})"
        except (ConversionError, PublishError) as error:
            status = f"error: {error}" if kind == "-" else f"converted, but {error}"
        except Exception as error:  # one unexpected failure must not stop the batch; it is reported like the others
            status = f"error: {type(error).__name__}: {error}"
        if status.startswith(("error", "converted, but")):
            failures += 1
            tqdm.write(f"{path.name}: {status}", file=sys.stderr)
        rows.append((path.name, kind, str(output_dir) if kind != "-" else "-", status))
    print()
    _print_summary(rows)
    print(f"\n{len(files) - failures} of {len(files)} converted{' and pushed' if args.push_to_hub else ''}.")
    return 1 if failures else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint_path", help="one official checkpoint file (BEATs_*.pt or Tokenizer_*.pt)")
    source.add_argument("--checkpoint_dir", help="a folder of official checkpoint files (batch mode)")
    parser.add_argument(
        "--pytorch_dump_folder_path",
        required=True,
        help="output folder (batch mode: the parent of one sub-folder per checkpoint)",
    )
    parser.add_argument(
        "--push_to_hub",
        metavar="REPO_ID_OR_NAMESPACE",
        help="push to this Hub repo (batch mode: a namespace; each file goes to NAMESPACE/<hub name>)",
    )
    parser.add_argument(
        "--private", action="store_true", help="create new Hub repos as private (existing repos keep their visibility)"
    )
    parser.add_argument(
        "--replace_hub_files",
        action="store_true",
        help="make the Hub repo exactly the converted folder, deleting files others added (by default they are kept)",
    )
    args = parser.parse_args(argv)
    for flag in ("private", "replace_hub_files"):
        if getattr(args, flag) and not args.push_to_hub:
            parser.error(f"--{flag} only applies with --push_to_hub")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Per-file save/load/upload bars would drown the one bar (batch mode) and the summary.
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    return _convert_folder(args) if args.checkpoint_dir else _convert_one(args)


if __name__ == "__main__":
    sys.exit(main())
