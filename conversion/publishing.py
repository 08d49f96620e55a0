"""Turn a converted model into a self-contained Hub repository folder, write it atomically, and push it.

The folder is exactly what gets pushed: model.safetensors, config.json with an `auto_map`, preprocessor_config.json
with an `auto_map`, the three model files of the installed beats_hf package (configuration_beats.py,
modeling_beats.py, feature_extraction_beats.py) and README.md, the model card rendered from MODEL_CARD.md. So the
repository loads with `trust_remote_code=True` where beats_hf is not installed, and with beats_hf's registered
classes where it is.

Output folders are never half-written: everything goes into a hidden staging folder next to the target, is reloaded
and checked there, and only then renamed into place. An existing target is replaced only after that succeeded, and
only if it is empty or an earlier beats_hf conversion (its config.json has a beats_hf model_type); any other
non-empty folder is refused before any work.
"""

import ast
import contextlib
import json
import os
import shutil
import string
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
import transformers
from huggingface_hub import HfApi, ModelCardData
from transformers import AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification

import beats_hf
from conversion.beats_conversion import ConversionError, SelfCheck, main_output
from conversion.checkpoints import CheckpointFacts

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "MODEL_CARD.md"
SHIPPED_FILES = ("configuration_beats.py", "modeling_beats.py", "feature_extraction_beats.py")
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


def usage_snippet(kind: str, model_id: str) -> str:
    """Python code that loads `model_id` with the Auto classes and runs it on a generated tone."""
    code = string.Template(_PREAMBLE).substitute(model_class=_MODEL_CLASS[kind], repo=json.dumps(model_id))
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
) -> str:
    """README.md for the converted checkpoint: MODEL_CARD.md filled in with this file's facts."""
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
        usage=usage_snippet(kind, model_id).rstrip("\n"),
        sha256=sha256,
        beats_hf_version=beats_hf.__version__,
        transformers_version=transformers.__version__,
        torch_version=torch.__version__,
        tokenizer_note=tokenizer_note,
        self_check=self_check_summary,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Writing the folder
# ---------------------------------------------------------------------------------------------------------------------


def _is_conversion_output(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and str(config.get("model_type", "")).startswith("beats_hf")


def check_output_dir(output_dir: Path) -> None:
    """Refuse a target we must not replace: a file, or a non-empty folder that no beats_hf conversion wrote."""
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise ConversionError(f"{output_dir} exists and is not a folder.")
    if any(output_dir.iterdir()) and not _is_conversion_output(output_dir):
        raise ConversionError(
            f"{output_dir} exists, is not empty and is not an earlier beats_hf conversion (no config.json with a "
            "beats_hf model_type); it is left untouched. Choose a new or empty folder."
        )


def _make_readable(folder: Path) -> None:
    """Give the staged folder and its files the permissions of a plain mkdir/open (mkdtemp makes them private)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_directory(output_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder next to `output_dir`; when the block succeeds it replaces `output_dir`, when it fails it
    is deleted and `output_dir` is as it was."""
    output_dir = Path(output_dir)
    check_output_dir(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        yield staging
        _make_readable(staging)
        check_output_dir(output_dir)  # it may have changed while we worked
        if output_dir.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
            output_dir.rename(trash / "previous")
            try:
                staging.rename(output_dir)
            except BaseException:
                (trash / "previous").rename(output_dir)
                raise
            finally:
                shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename


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


def push_folder(folder: str | os.PathLike, repo_id: str, private: bool = False) -> str:
    """Create `repo_id` if needed and make its files exactly the folder's (`.gitattributes` kept); returns its URL.

    The client honours HF_ENDPOINT and HF_TOKEN (or a stored login). `private` applies when the repo is created.
    """
    folder = Path(folder)
    try:
        api = HfApi()
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=repo_url.repo_id,
            folder_path=folder,
            commit_message=f"Upload {folder.name}, converted from the official BEATs checkpoint by beats_hf",
            delete_patterns="*",  # files of an earlier upload that this conversion no longer has
        )
    except Exception as error:  # network, auth and server errors come in many types; all mean "not pushed"
        raise PublishError(f"pushing {folder} to {repo_id} failed: {type(error).__name__}: {error}") from error
    return str(repo_url)
