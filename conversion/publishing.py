"""Turn a converted model into a self-contained Hub repository folder, write it atomically, and push it.

The folder is exactly what gets pushed: model.safetensors, config.json with an `auto_map`, preprocessor_config.json
with an `auto_map`, the three model files of the installed beats_hf package (configuration_beats.py,
modeling_beats.py, feature_extraction_beats.py) and README.md, the model card rendered from MODEL_CARD.md. So the
repository loads with `trust_remote_code=True` where beats_hf is not installed, and with beats_hf's registered
classes where it is.

Output folders are never half-written: everything goes into a hidden work folder next to the target, is reloaded and
checked there, and only then renamed into place. Each folder holds MANIFEST, the record of the files the converter
wrote (name, size, SHA-256). An existing target is replaced only after that succeeded, and only if it is empty or
holds nothing but the files its MANIFEST records, unchanged; anything else is refused, naming what is not ours. A
conversion killed half-way leaves its work folder; the next conversion to the same target removes it.

A push keeps the repository files the converter did not write: it deletes only files that the repository's own
MANIFEST (from the previous push) records, that are unchanged since and that this push no longer has, unless
`replace_hub_files` says to make the repository exactly the folder.
"""

import ast
import contextlib
import json
import os
import shutil
import string
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, ModelCardData
from transformers import AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification

import beats_hf
from conversion.beats_conversion import ConversionError, ConversionWarning, SelfCheck, file_sha256, main_output
from conversion.checkpoints import CheckpointFacts

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so no work folder is ever judged stale there
    fcntl = None

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "MODEL_CARD.md"
SHIPPED_FILES = ("configuration_beats.py", "modeling_beats.py", "feature_extraction_beats.py")
# In every output folder and pushed repository: what the converter wrote there (see write_manifest).
MANIFEST = "beats_hf_manifest.json"
# In a work folder `.{target}.partial-XXXXXXXX`: says it is ours and, while locked, that its conversion still runs.
PARTIAL_MARKER = "beats_hf_partial.json"
FEATURE_EXTRACTOR_AUTO_MAP = {"AutoFeatureExtractor": "feature_extraction_beats.BeatsFeatureExtractor"}
# config.json `auto_map` per checkpoint kind: what each Auto class builds from this repository's own code.
CONFIG_AUTO_MAPS = {
    "pretrained": {
        "AutoConfig": "configuration_beats.BeatsConfig",
        "AutoModel": "modeling_beats.BeatsModel",
        "AutoModelForAudioClassification": "modeling_beats.BeatsForAudioClassification",
        "AutoModelForAudioFrameClassification": "modeling_beats.BeatsForAudioFrameClassification",
    },
    "finetuned": {
        "AutoConfig": "configuration_beats.BeatsConfig",
        "AutoModel": "modeling_beats.BeatsModel",
        "AutoModelForAudioClassification": "modeling_beats.BeatsForAudioClassification",
    },
    "tokenizer": {
        "AutoConfig": "configuration_beats.BeatsTokenizationConfig",
        "AutoModel": "modeling_beats.BeatsForAudioTokenization",
    },
}
# The Auto class that rebuilds the converted model itself (the saved folder is reloaded with it as a check).
MAIN_AUTO_CLASS = {
    "pretrained": AutoModel,
    "finetuned": AutoModelForAudioClassification,
    "tokenizer": AutoModel,
}
CARD_TAGS = {
    "pretrained": ["audio", "beats", "audioset", "self-supervised-learning", "feature-extraction"],
    "finetuned": ["audio", "beats", "audioset", "audio-classification", "multi-label-classification"],
    "tokenizer": ["audio", "beats", "audioset", "self-supervised-learning", "audio-tokenizer"],
}
PIPELINE_TAG = {
    "pretrained": "feature-extraction",
    "finetuned": "audio-classification",
    "tokenizer": "feature-extraction",
}


class PublishError(RuntimeError):
    """Pushing to the Hub failed; the converted folder itself is complete."""


# ---------------------------------------------------------------------------------------------------------------------
# Remote code
# ---------------------------------------------------------------------------------------------------------------------


def shipped_sources() -> dict[str, Path]:
    """The model files of the installed beats_hf package, checked to import nothing but torch, numpy, transformers,
    the standard library and each other (single-dot relative imports), so they work from a Hub repository."""
    package_dir = Path(beats_hf.__file__).resolve().parent
    sources = {name: package_dir / name for name in SHIPPED_FILES}
    for name, path in sources.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                target = f"{node.module}.py" if node.module else None
                if node.level > 1 or target not in SHIPPED_FILES:
                    relative = f"{'.' * node.level}{node.module or ''}"
                    raise ConversionError(f"{name} imports {relative}: it cannot ship without beats_hf.")
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module or ""]
            if any(module.split(".")[0] == "beats_hf" for module in modules):
                raise ConversionError(f"{name} imports beats_hf: it would not load where beats_hf is not installed.")
    return sources


def _add_auto_map(json_path: Path, auto_map: dict[str, str]) -> None:
    data = json.loads(json_path.read_text(encoding="utf-8"))
    data["auto_map"] = auto_map
    json_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def add_remote_code(folder: Path, kind: str) -> None:
    """Copy the model files into a saved model folder and point its configs' `auto_map` at them."""
    for name, path in shipped_sources().items():
        shutil.copyfile(path, folder / name)
    _add_auto_map(folder / "config.json", CONFIG_AUTO_MAPS[kind])
    _add_auto_map(folder / "preprocessor_config.json", FEATURE_EXTRACTOR_AUTO_MAP)


# ---------------------------------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------------------------------

_PREAMBLE = """\
import numpy as np
import torch
from transformers import AutoFeatureExtractor, $model_class

repo = $repo
feature_extractor = AutoFeatureExtractor.from_pretrained(repo, trust_remote_code=True)
model = $model_class.from_pretrained(repo, trust_remote_code=True).eval()

# 16 kHz mono float audio in [-1, 1]: here 3 s of a 440 Hz tone (a list of clips of any lengths works too).
waveform = (0.5 * np.sin(2 * np.pi * 440 * np.arange(3 * 16000) / 16000)).astype(np.float32)
inputs = feature_extractor(waveform, sampling_rate=16000, return_tensors="pt")  # input_features + attention_mask
"""
_USAGE = {
    "finetuned": """\
with torch.no_grad():
    probabilities = model(**inputs).logits.sigmoid()[0]  # AudioSet is multi-label: sigmoid, not softmax
top = probabilities.topk(min(5, probabilities.numel()))
for score, index in zip(top.values.tolist(), top.indices.tolist()):
    print(f"{model.config.id2label[index]}: {score:.3f}")

# Or with the pipeline (it applies the sigmoid for multi-label models):
from transformers import pipeline

classifier = pipeline("audio-classification", model=repo, trust_remote_code=True)
print(classifier(waveform, top_k=5))
""",
    "pretrained": """\
with torch.no_grad():
    outputs = model(**inputs)
patch_embeddings = outputs.last_hidden_state  # (batch, patches, hidden_size): one vector per 16x16 fbank patch
mask = outputs.patch_mask.unsqueeze(-1).to(patch_embeddings.dtype)  # valid patches (padding excluded)
clip_embeddings = (patch_embeddings * mask).sum(1) / mask.sum(1)  # (batch, hidden_size)
print(patch_embeddings.shape, clip_embeddings.shape)
""",
    "tokenizer": """\
with torch.no_grad():
    outputs = model(**inputs)
token_ids = outputs.token_ids  # (batch, patches): one code per 16x16 fbank patch, -100 on padded patches
print(token_ids.shape, token_ids[0, :16].tolist())
""",
}
_MODEL_CLASS = {"finetuned": "AutoModelForAudioClassification", "pretrained": "AutoModel", "tokenizer": "AutoModel"}
_KIND_WORDS = {
    "pretrained": "pre-trained model",
    "finetuned": "fine-tuned classifier",
    "tokenizer": "acoustic tokenizer",
}


def usage_snippet(kind: str, model_id: str, local: bool = False) -> str:
    """Python code that loads `model_id` with the Auto classes and runs it on a generated tone. `local`: model_id is
    the folder's name, not a Hub id (the card never holds an absolute local path)."""
    repo = json.dumps(model_id) + ("  # this folder, run from the folder above it; or its Hub id" if local else "")
    code = string.Template(_PREAMBLE).substitute(model_class=_MODEL_CLASS[kind], repo=repo)
    return code + _USAGE[kind]


def _architecture(model: torch.nn.Module, kind: str) -> str:
    config = model.config
    layout = "pre-LN" if config.layer_norm_first else "post-LN"
    text = (
        f"a {config.num_hidden_layers}-layer {layout} Transformer of width {config.hidden_size} "
        f"({config.num_attention_heads} heads) with {sum(p.numel() for p in model.parameters()):,} parameters"
    )
    if kind == "finetuned":
        text += f", including a {config.num_labels}-class head"
    if kind == "tokenizer":
        text += f", including a codebook of {config.codebook_size} codes of dimension {config.codebook_dim}"
    return text


def _results(facts: CheckpointFacts | None, file_name: str) -> str:
    if facts is None:
        return f"`{file_name}` is not one of the files released with the paper, so no results are listed for it."
    rows = ["| benchmark | result |", "|---|---|"] + [f"| {name} | {value} |" for name, value in facts.results]
    return "\n".join(rows) + f"\n\n{facts.results_note} These are the paper's numbers, not re-measured here."


def render_model_card(
    model: torch.nn.Module,
    kind: str,
    file_name: str,
    sha256: str,
    model_id: str,
    self_check_summary: str,
    facts: CheckpointFacts | None,
    local: bool = False,
) -> str:
    """README.md for the converted checkpoint: MODEL_CARD.md filled in with this file's facts. `local`: `model_id`
    is the output folder's name rather than a Hub id."""
    if facts is not None and facts.kind != kind:
        raise ConversionError(f"{file_name} is a released {facts.kind} file by name, but its contents are a {kind}.")
    front_matter = ModelCardData(
        license="mit",
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG[kind],
        tags=CARD_TAGS[kind],
        datasets=["agkphysics/AudioSet"],
    ).to_yaml()
    if facts is None:
        title = f"BEATs {_KIND_WORDS[kind]} converted from `{file_name}`"
        description = (
            f"A BEATs {_KIND_WORDS[kind]} in the official checkpoint format. `{file_name}` is not one of the files "
            "released with the paper, so this card states nothing about how it was trained."
        )
    else:
        title, description = facts.title, facts.description
    tokenizer_note = ""
    if kind == "tokenizer":
        tokenizer_note = ", and the codebook's EMA training state (cluster sizes, running averages) dropped"
    template = string.Template(MODEL_CARD_TEMPLATE.read_text(encoding="utf-8"))
    return template.substitute(
        front_matter=front_matter,
        title=title,
        description=description,
        file_name=file_name,
        architecture=_architecture(model, kind),
        results=_results(facts, file_name),
        usage=usage_snippet(kind, model_id, local).rstrip("\n"),
        sha256=sha256,
        beats_hf_version=beats_hf.__version__,
        transformers_version=transformers.__version__,
        torch_version=torch.__version__,
        tokenizer_note=tokenizer_note,
        self_check=self_check_summary,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Writing the folder: the record of what beats_hf wrote, and the staging folder
# ---------------------------------------------------------------------------------------------------------------------


def write_manifest(folder: Path) -> None:
    """Record every file of `folder` (top-level names, sizes, SHA-256) in its MANIFEST."""
    files = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.is_symlink():
            raise ConversionError(f"{path.name} in the staging folder is not a plain file; the converter writes none.")
        if path.name != MANIFEST:
            files[path.name] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    record = {"written_by": "beats_hf conversion", "beats_hf_version": beats_hf.__version__, "files": files}
    (folder / MANIFEST).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def parse_manifest(text: str | bytes) -> dict[str, dict] | None:
    """The `files` of a MANIFEST (name -> {"size", "sha256"}), or None if it is not one."""
    try:
        record = json.loads(text)
    except ValueError:
        return None
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or record.get("written_by") != "beats_hf conversion":
        return None
    valid = all(
        isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)
        for entry in files.values()
    )
    return files if valid else None


def read_manifest(folder: Path) -> dict[str, dict] | None:
    try:
        return parse_manifest((folder / MANIFEST).read_bytes())
    except OSError:
        return None


def foreign_entries(folder: Path) -> list[str]:
    """What in `folder` beats_hf did not write, or changed since it wrote it: empty when every entry is in its
    MANIFEST with the recorded size and SHA-256. Without a valid MANIFEST, everything is foreign."""
    recorded = read_manifest(folder)
    foreign = []
    for path in sorted(folder.iterdir()):
        if path.name == MANIFEST and recorded is not None:
            continue
        entry = (recorded or {}).get(path.name)
        if path.is_symlink() or not path.is_file():
            foreign.append(f"{path.name}/" if path.is_dir() and not path.is_symlink() else path.name)
        elif entry is None:
            foreign.append(path.name)
        elif path.stat().st_size != entry["size"] or file_sha256(path) != entry["sha256"]:
            foreign.append(f"{path.name} (changed since beats_hf wrote it)")
    return foreign


def _name_some(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_output_dir(output_dir: Path) -> None:
    """Refuse a target we must not replace: a file, or a non-empty folder holding anything beats_hf did not write."""
    if not output_dir.exists() and not output_dir.is_symlink():
        return
    if output_dir.is_symlink() or not output_dir.is_dir():
        raise ConversionError(f"{output_dir} exists and is a link or not a folder; it is left untouched.")
    foreign = foreign_entries(output_dir)
    if foreign:
        why = "" if read_manifest(output_dir) is not None else f" (it has no valid {MANIFEST}, the converter's record)"
        raise ConversionError(
            f"{output_dir} holds files beats_hf did not write{why}: {_name_some(foreign)}; it is left untouched. "
            "Move them away or choose a new or empty folder."
        )


def _remove_recorded(folder: Path) -> bool:
    """Delete the files `folder`'s MANIFEST lists, the MANIFEST, then the folder if that emptied it; True if gone."""
    recorded = read_manifest(folder)
    for name in [*recorded, MANIFEST] if recorded is not None else []:
        (folder / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: something appeared that beats_hf did not write, so it stays
        folder.rmdir()
    return not folder.exists()


def _try_lock(handle, wait: bool = False) -> bool:
    """An exclusive advisory lock on an open file. The kernel drops it when the holder dies, however it dies, so a
    lock we can take without waiting means the conversion that made the file is gone."""
    if fcntl is None:
        return False  # no advisory locks here: never judge a partial folder stale
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _partial_prefix(output_dir: Path) -> str:
    return f".{output_dir.name}.partial-"


def _discard_work_folder(work: Path) -> None:
    """Empty and remove a work folder of ours whose marker is still locked by the caller: its staging folder (all of
    it ours), its moved-aside earlier conversion (only what that one's MANIFEST lists), then the marker."""
    shutil.rmtree(work / "new", ignore_errors=True)
    old = work / "old"
    if old.exists() and not _remove_recorded(old):
        message = f"{old} holds files beats_hf did not write (they appeared during the conversion); it is kept."
        warnings.warn(ConversionWarning(message), stacklevel=2)
        return
    (work / PARTIAL_MARKER).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        work.rmdir()


def remove_stale_partials(output_dir: Path) -> list[Path]:
    """Remove the work folders that killed conversions to `output_dir` left next to it, and return them.

    A folder is ours and stale only if its name has our pattern, it holds our marker naming this target, and no live
    process holds the marker's lock. A conversion killed while swapping folders left the target's earlier conversion
    in `old/` and no target: that earlier conversion is put back first.
    """
    removed = []
    parent = output_dir.parent
    candidates = sorted(p for p in parent.iterdir() if p.name.startswith(_partial_prefix(output_dir)))
    for work in candidates:
        if work.is_symlink() or not work.is_dir():
            continue
        try:
            handle = open(work / PARTIAL_MARKER, encoding="utf-8")
        except OSError:
            continue  # no marker: not a folder we can tell is ours
        with handle:
            if not _try_lock(handle) or parse_partial_marker(handle.read()) != output_dir.name:
                continue
            old = work / "old"
            if old.is_dir() and not output_dir.exists() and not output_dir.is_symlink():
                old.rename(output_dir)
            _discard_work_folder(work)
        if not work.exists():
            removed.append(work)
    return removed


def parse_partial_marker(text: str) -> str | None:
    """The target folder name a work folder's marker names, or None if the text is not our marker."""
    try:
        marker = json.loads(text)
    except ValueError:
        return None
    if not isinstance(marker, dict) or marker.get("written_by") != "beats_hf conversion":
        return None
    return marker.get("target")


@contextlib.contextmanager
def atomic_directory(output_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder next to `output_dir`; when the block succeeds it replaces `output_dir`, when it fails it
    is deleted and `output_dir` is as it was.

    The staging folder is `new/` inside a work folder `.{name}.partial-XXXXXXXX/` that holds our marker, locked for as
    long as this runs. The earlier conversion is moved to `old/` there for the swap, then its recorded files deleted.
    """
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(output_dir)  # may put back an earlier conversion, so it comes before the check
    check_output_dir(output_dir)
    work = Path(tempfile.mkdtemp(prefix=_partial_prefix(output_dir), dir=output_dir.parent))
    # Created exclusively and locked before it says anything, so a reader sees no marker, an empty one, or a lock. The
    # lock waits: a reader that looked at the still empty marker holds it for a moment.
    with open(os.open(work / PARTIAL_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "w") as marker:
        _try_lock(marker, wait=True)
        marker.write(json.dumps({"written_by": "beats_hf conversion", "target": output_dir.name}) + "\n")
        marker.flush()
        staging = work / "new"
        staging.mkdir()
        try:
            yield staging
            write_manifest(staging)
            check_output_dir(output_dir)  # it may have changed while we worked
            if output_dir.exists():
                output_dir.rename(work / "old")
                try:
                    staging.rename(output_dir)
                except BaseException:
                    (work / "old").rename(output_dir)
                    raise
            else:
                staging.rename(output_dir)
        finally:
            _discard_work_folder(work)


def verify_folder(folder: Path, kind: str, check: SelfCheck) -> None:
    """Reload the saved folder the way users will (Auto classes) and require the self-check outputs bit for bit."""
    feature_extractor = AutoFeatureExtractor.from_pretrained(folder)
    model = MAIN_AUTO_CLASS[kind].from_pretrained(folder).eval()
    inputs = feature_extractor(check.raw_audio, sampling_rate=16000, return_tensors="pt")
    if not torch.equal(inputs["input_features"], check.inputs["input_features"]):
        raise ConversionError("the saved feature extractor does not reproduce the features of the self-check.")
    if not torch.equal(main_output(model, inputs), check.output):
        raise ConversionError("the saved model does not reproduce the outputs of the converted model.")


def save_folder(
    output_dir: str | os.PathLike, model: torch.nn.Module, feature_extractor, kind: str, card: str, check: SelfCheck
) -> Path:
    """Write the complete repository folder atomically (see the module docstring) and return its path."""
    with atomic_directory(output_dir) as staging:
        model.save_pretrained(staging)
        feature_extractor.save_pretrained(staging)
        add_remote_code(staging, kind)
        (staging / "README.md").write_text(card, encoding="utf-8")
        verify_folder(staging, kind, check)
    return Path(output_dir)


# ---------------------------------------------------------------------------------------------------------------------
# Hub
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Pushed:
    url: str
    deleted: list[str]  # files of the previous push that this one no longer has
    kept: list[str]  # repository files the converter did not write, or that changed since it did


def _remote_file_unchanged(api: HfApi, repo_id: str, revision: str | None, sibling, entry: dict) -> bool:
    """Whether a repository file still has the size and SHA-256 a MANIFEST recorded for it."""
    if sibling.size is not None and sibling.size != entry["size"]:
        return False
    if sibling.lfs is not None:
        return sibling.lfs.sha256 == entry["sha256"]
    # Not in LFS: the Hub gives only a git blob id, so the (small) file is fetched and hashed.
    return file_sha256(api.hf_hub_download(repo_id, sibling.rfilename, revision=revision)) == entry["sha256"]


def push_folder(
    folder: str | os.PathLike, repo_id: str, private: bool = False, replace_hub_files: bool = False
) -> Pushed:
    """Create `repo_id` if needed and upload the converted folder to it in one commit.

    Repository files the folder does not have are deleted only if the repository's MANIFEST, the record of the
    previous push, lists them and they are unchanged since; all others (a colleague's notes, evaluation results, a
    file the previous push wrote and someone changed) are kept and returned in `kept`. With `replace_hub_files` the
    repository becomes exactly the folder (`.gitattributes` kept). The commit names the revision it was planned on,
    so a push that races another commit fails instead of deleting the newcomer's files.

    The client honours HF_ENDPOINT and HF_TOKEN (or a stored login). `private` applies when the repo is created.
    """
    folder = Path(folder)
    foreign = foreign_entries(folder)
    if foreign:  # the repository's MANIFEST must tell the truth about what the converter wrote
        raise PublishError(f"{folder} holds files the converter did not write: {_name_some(foreign)}; not pushed.")
    uploads = sorted(path.name for path in folder.iterdir())
    try:
        api = HfApi()
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        repo_id = repo_url.repo_id
        info = api.model_info(repo_id, files_metadata=True)
        remote = {sibling.rfilename: sibling for sibling in info.siblings or []}
        recorded = {}
        if MANIFEST in remote and not replace_hub_files:
            recorded = parse_manifest(Path(api.hf_hub_download(repo_id, MANIFEST, revision=info.sha)).read_bytes())
        deleted, kept = [], []
        for name in sorted(set(remote) - set(uploads) - {".gitattributes"}):
            entry = (recorded or {}).get(name)
            ours = entry is not None and _remote_file_unchanged(api, repo_id, info.sha, remote[name], entry)
            (deleted if replace_hub_files or ours else kept).append(name)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in uploads]
        operations += [CommitOperationDelete(path_in_repo=name) for name in deleted]
        api.create_commit(
            repo_id,
            operations,
            commit_message=f"Upload {folder.name}, converted from the official BEATs checkpoint by beats_hf",
            parent_commit=info.sha,
        )
    except Exception as error:  # network, auth and server errors come in many types; all mean "not pushed"
        raise PublishError(f"pushing {folder} to {repo_id} failed: {type(error).__name__}: {error}") from error
    return Pushed(url=str(repo_url), deleted=deleted, kept=kept)
