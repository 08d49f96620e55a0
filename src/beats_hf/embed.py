"""`beats-hf embed`: clip embeddings and frame-level features of a folder or dataset of audio.

Clip embedding = mean over the clip's valid patches (`--pooling mean`), or per frequency band the mean and standard
deviation over the valid time rows (`--pooling frequency_bands`, what a `classifier_pooling="frequency_bands"` head
sees: 2 x 8 x hidden_size numbers); frame features = one vector per 160 ms (a row of 16 fbank
frames), the mean of the row's frequency patches. Either from one layer (`--layer`, an index into the hidden states:
0 = encoder input, -1 = last) or a weighted sum of all layers (`--layer weighted`: a fine-tuned model's learned
`layer_weights` when it has them, else the plain mean).

Memory is bounded by default: a recording longer than `--chunk_seconds` (10 s) goes through the long-audio path
(`beats_hf.long_audio`: windows of that length every `--hop_seconds`, 8 s, each row taken from the window where it is
most central), with either pooling; shorter ones are batched whole. So no forward pass sees more than one window, and
the peak memory does not grow with the recordings' length. `--no_chunking` runs each recording whole instead (one
forward: memory and time grow with the square of its length, e.g. 4.75 GB for 3 minutes on a tiny model).

Outputs are written under temporary names and renamed into place; `embeddings.json`, written last, marks a complete
output folder.

    beats-hf embed --model PATH --data FOLDER_OR_DATASET --output_dir OUT [--format datasets|npy] [--frames]
"""

import argparse
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoFeatureExtractor, AutoModel

from .audio_data import AudioClips, AudioFeatureCollator, load_audio_dataset
from .configuration_beats import CLASSIFIER_POOLINGS
from .long_audio import DEFAULT_WINDOW_SECONDS, _grid, embed_long_audio
from .modeling_beats import clip_feature_size, frequency_rows, masked_mean, pool_frequency_bands, weighted_layer_sum
from .sources import resolve_source

logger = logging.getLogger(__name__)


def layer_mixture(model, layer: str, num_hidden_states: int) -> torch.Tensor:
    """Weights over the hidden states: one-hot for a layer index, the learned or uniform mix for 'weighted'."""
    if layer == "weighted":
        learned = getattr(model, "layer_weights", None)
        if learned is not None:
            return torch.softmax(learned.detach().float(), dim=0)
        return torch.full((num_hidden_states,), 1.0 / num_hidden_states)
    index = int(layer)
    if not -num_hidden_states <= index < num_hidden_states:
        raise ValueError(f"--layer {index} is out of range: the model has {num_hidden_states} hidden states.")
    weights = torch.zeros(num_hidden_states)
    weights[index] = 1.0
    return weights


def encoder_of(model):
    """Deprecated: the encoder of any BEATs model is transformers' `model.base_model`."""
    warnings.warn("beats_hf.embed.encoder_of(model) is deprecated: use model.base_model.", FutureWarning, stacklevel=2)
    return model.base_model


@torch.inference_mode()
def embed_batch(model, batch: dict, weights: torch.Tensor, bands: int,
                pooling: str = "mean") -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(clip embeddings (B, C) or (B, 2 * bands * C), per-clip frame features [(rows_i, C)]) for one feature batch."""
    outputs = model.base_model(batch["input_features"], attention_mask=batch.get("attention_mask"),
                               output_hidden_states=True)
    hidden = weighted_layer_sum([state.float() for state in outputs.hidden_states], weights)
    batch_size, num_patches, _ = hidden.shape
    mask = outputs.patch_mask
    if mask is None:
        mask = torch.ones(batch_size, num_patches, dtype=torch.bool, device=hidden.device)
    if pooling == "frequency_bands":
        clips = pool_frequency_bands(hidden, mask, bands)
    else:
        clips = masked_mean(hidden, mask.unsqueeze(-1), dim=1)
    rows = frequency_rows(hidden, bands).mean(2)
    valid_rows = mask.view(batch_size, -1, bands)[..., 0].sum(-1)
    return clips.cpu(), [rows[i, : int(valid_rows[i])].cpu() for i in range(batch_size)]


def _replace_with(path: Path, write) -> None:
    """`write(temporary)` next to `path`, then rename it to `path`: a killed run never leaves a half-written output
    under the final name."""
    temporary = path.with_name(f".{path.name}.partial")
    if temporary.is_dir():
        shutil.rmtree(temporary)  # our own leftover from a killed run
    write(temporary)
    if path.is_dir():  # a directory cannot be renamed onto a non-empty one: move the old one out of the way first
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(temporary, path)
        shutil.rmtree(old)
    else:
        os.replace(temporary, path)


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:  # a file handle: np.save would append ".npy" to a path
            np.save(handle, array)

    _replace_with(path, write)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="beats-hf embed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="beats_hf folder or Hub repo (any BEATs model)")
    parser.add_argument("--data", required=True, help="audio folder, saved dataset or Hub dataset id")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--split", default=None, help="dataset split (default: the only one)")
    parser.add_argument("--audio_column", default="audio")
    parser.add_argument("--layer", default="-1",
                        help="hidden-state index (0 = encoder input, -1 = last) or 'weighted'")
    parser.add_argument("--pooling", choices=CLASSIFIER_POOLINGS, default="mean",
                        help="clip embedding: mean over patches, or per-frequency-band mean and std")
    parser.add_argument("--frames", action="store_true", help="also write frame-level features (one per 160 ms)")
    parser.add_argument("--format", choices=("datasets", "npy"), default="datasets")
    parser.add_argument("--batch_size", type=int, default=8, help="clips (or windows of a long recording) per forward")
    parser.add_argument("--chunk_seconds", type=float, default=None,
                        help=f"recordings longer than this go through sliding windows of this length "
                             f"(default {DEFAULT_WINDOW_SECONDS:g})")
    parser.add_argument("--hop_seconds", type=float, default=None, help="window hop (default: 0.8 x chunk)")
    parser.add_argument("--no_chunking", action="store_true",
                        help="one forward over each whole recording: memory and time grow with the square of its "
                             "length")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--trust_remote_code", action="store_true")
    args = parser.parse_args(argv)
    if args.no_chunking and (args.chunk_seconds is not None or args.hop_seconds is not None):
        parser.error("--no_chunking runs whole recordings: it cannot be combined with --chunk_seconds/--hop_seconds")
    if args.batch_size < 1:
        parser.error(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.chunk_seconds is not None and not args.chunk_seconds > 0:
        parser.error(f"--chunk_seconds must be positive, got {args.chunk_seconds} (--no_chunking turns chunking off)")
    chunk_seconds = None if args.no_chunking else args.chunk_seconds or DEFAULT_WINDOW_SECONDS

    source = resolve_source(args.model)
    model = AutoModel.from_pretrained(source, trust_remote_code=args.trust_remote_code).to(args.device).eval()
    feature_extractor = AutoFeatureExtractor.from_pretrained(source, trust_remote_code=args.trust_remote_code)
    grid = None
    if chunk_seconds is not None:
        try:  # bad window settings fail here, not after the first long file
            grid = _grid(feature_extractor, chunk_seconds, args.hop_seconds)
        except ValueError as error:
            parser.error(str(error).replace("`window_seconds`", "--chunk_seconds").replace("`hop_seconds`",
                                                                                          "--hop_seconds"))
    config = model.base_model.config
    weights = layer_mixture(model, args.layer, config.num_hidden_layers + 1)
    bands = config.num_frequency_patches
    # A single layer is picked directly: no stack of all hidden states per window batch.
    layer_choice = {"layer_weights": weights} if args.layer == "weighted" else {"layer": int(args.layer)}

    dataset = load_audio_dataset(args.data, split=args.split, audio_column=args.audio_column)
    clips = AudioClips(dataset, crop_seconds=None, label_column=None, audio_column=args.audio_column,
                       replace_bad=False, return_index=True)
    collator = AudioFeatureCollator(feature_extractor, device=args.device)  # the fbank runs on the model's device

    indices, clip_embeddings, frame_features = [], [], []
    pending: list[dict] = []

    def flush():
        if not pending:
            return
        batch = collator(pending)
        clip_batch, frame_batch = embed_batch(model, batch, weights, bands, args.pooling)
        indices.extend(batch["index"].tolist())
        clip_embeddings.extend(clip_batch)
        frame_features.extend(frame_batch)
        pending.clear()

    for position in tqdm(range(len(clips)), desc="embedding", unit="file"):
        item = clips[position]
        if item is None:
            continue
        if grid is not None and len(item["waveform"]) > grid.window_samples:
            result = embed_long_audio(model.base_model, feature_extractor, item["waveform"],
                                      window_seconds=chunk_seconds, hop_seconds=args.hop_seconds,
                                      batch_size=args.batch_size, pooling=args.pooling, **layer_choice)
            indices.append(item["index"])
            clip_embeddings.append(result.clip_embedding)
            frame_features.append(result.frame_embeddings)
            continue
        pending.append(item)
        if len(pending) == args.batch_size:
            flush()
    flush()

    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    clip_width = clip_feature_size(config, args.pooling)
    clip_array = torch.stack(clip_embeddings).numpy() if clip_embeddings else np.zeros((0, clip_width))
    summary = {"model": args.model, "data": args.data, "layer": args.layer, "pooling": args.pooling,
               "clips": len(indices), "skipped": clips.skipped, "hidden_size": config.hidden_size,
               "clip_embedding_size": clip_width, "frame_seconds": 0.16,
               "chunk_seconds": chunk_seconds,  # None: --no_chunking
               "hop_seconds": None if grid is None else grid.hop_rows * grid.row_samples / 16000}
    if args.format == "npy":
        _save_npy(output / "clip_embeddings.npy", clip_array)
        _save_npy(output / "indices.npy", np.asarray(indices, dtype=np.int64))
        if args.frames:
            lengths = [len(frames) for frames in frame_features]
            _save_npy(output / "frame_embeddings.npy",
                      torch.cat(frame_features).numpy() if lengths else clip_array[:0])
            _save_npy(output / "frame_offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    else:
        import datasets

        columns = {"index": indices, "clip_embedding": clip_array.tolist()}
        if args.frames:
            columns["frame_embeddings"] = [frames.numpy().tolist() for frames in frame_features]
        table = datasets.Dataset.from_dict(columns)
        _replace_with(output / "embeddings", lambda temporary: table.save_to_disk(str(temporary)))
    _replace_with(output / "embeddings.json", lambda temporary: temporary.write_text(json.dumps(summary, indent=2)))
    print(f"embedded {len(indices)} clips ({clips.skipped} unreadable skipped) -> {output}")
    return 0
