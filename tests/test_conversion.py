"""The conversion command line: official-format files -> repository folders that match the official outputs.

Parity is against the official reference outputs in tests/fixtures/official_tiny/ (produced by the unmodified official
code), through the saved folder: the model loaded by the Auto classes on the official fbank, and the folder's feature
extractor on the raw waveforms within float32 rounding of the exact fbank (fbank_rounding.py). The pipeline, which
takes raw audio, is held to the model's tolerance plus the fbank's rounding carried through the model. The base-size
checks synthesise a state dict with exactly the names and shapes of the released files.
"""

import argparse
import csv
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, OFFICIAL_TINY, REPO_ROOT, official_clip_features
from fbank_rounding import assert_within_rounding, exact_features, probability_tolerance
from huggingface_hub import ModelCard
from transformers import AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification, pipeline

import beats_hf
from beats_hf import BeatsForAudioClassification, BeatsForAudioTokenization, BeatsModel
from conversion.beats_conversion import (
    AUDIOSET_LABELS_CSV,
    ConversionError,
    ConversionWarning,
    config_from_official,
    convert_checkpoint,
)
from conversion.checkpoints import OFFICIAL_CHECKPOINTS, hub_name
from conversion.convert_beats_original_to_hf import main
from conversion.publishing import CONFIG_AUTO_MAPS, MANIFEST, PARTIAL_MARKER, SHIPPED_FILES, render_model_card

SCRIPT = REPO_ROOT / "conversion" / "convert_beats_original_to_hf.py"
REFERENCES = ("pretrained", "finetuned", "tokenizer", "prenorm_pretrained")
ENCODER_ATOL = 5e-5
PROBABILITY_ATOL = 1e-5


def convert(source: Path, output: Path, *extra: str) -> int:
    return main(["--checkpoint_path", str(source), "--pytorch_dump_folder_path", str(output), *extra])


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Each reference checkpoint converted by the command line into its own folder."""
    root = tmp_path_factory.mktemp("converted")
    result = {}
    for name in REFERENCES:
        assert convert(OFFICIAL_TINY / f"tiny_{name}.pt", root / name) == 0
        result[name] = root / name
    return result


@pytest.fixture(scope="module")
def official_outputs() -> dict[str, dict]:
    return {name: torch.load(OFFICIAL_TINY / f"outputs_{name}.pt", weights_only=True)["cases"] for name in REFERENCES}


def unpadded_cases(reference_inputs, feature_extractor) -> dict[str, dict]:
    """Case name -> official fbank inputs, for the official cases run without padding (single_unpadded is clip 0).
    On the way, the folder's feature extractor must give each clip's fbank to rounding."""
    cases = {}
    for index, waveform in enumerate(reference_inputs["individual_waveforms"]):
        extracted = feature_extractor(waveform[0].numpy(), sampling_rate=16000, return_tensors="pt")
        exact, bound = exact_features(waveform)
        assert_within_rounding(extracted["input_features"], exact, bound, f"folder's feature extractor, clip {index}")
        cases[f"individual_{index}"] = official_clip_features(reference_inputs, index)
    cases["single_unpadded"] = cases["individual_0"]
    return cases


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return (actual - expected).abs().max().item()


# ---------------------------------------------------------------------------------------------------------------------
# Parity of the saved folders with the official outputs
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.float_sensitive
def test_finetuned_folder_gives_official_probabilities(folders, official_outputs, reference_inputs):
    folder = folders["finetuned"]
    feature_extractor = AutoFeatureExtractor.from_pretrained(folder)
    model = AutoModelForAudioClassification.from_pretrained(folder).eval()
    encoder = AutoModel.from_pretrained(folder).eval()  # the encoder alone, from the same classification folder
    assert isinstance(model, BeatsForAudioClassification) and type(encoder) is BeatsModel
    for case, inputs in unpadded_cases(reference_inputs, feature_extractor).items():
        with torch.no_grad():
            probabilities = model(**inputs).logits.sigmoid()
            hidden = encoder(**inputs).last_hidden_state
        expected = official_outputs["finetuned"][case]
        assert max_error(probabilities, expected["probs"]) <= PROBABILITY_ATOL, case
        assert max_error(hidden, expected["last_hidden_state"]) <= ENCODER_ATOL, case


@pytest.mark.float_sensitive
@pytest.mark.parametrize("name", ["pretrained", "prenorm_pretrained"])
def test_pretrained_folder_gives_official_hidden_states(name, folders, official_outputs, reference_inputs):
    feature_extractor = AutoFeatureExtractor.from_pretrained(folders[name])
    model = AutoModel.from_pretrained(folders[name]).eval()
    assert type(model) is BeatsModel
    for case, inputs in unpadded_cases(reference_inputs, feature_extractor).items():
        with torch.no_grad():
            hidden = model(**inputs).last_hidden_state
        assert max_error(hidden, official_outputs[name][case]["last_hidden_state"]) <= ENCODER_ATOL, case


@pytest.mark.float_sensitive
def test_tokenizer_folder_gives_official_labels(folders, official_outputs, reference_inputs):
    feature_extractor = AutoFeatureExtractor.from_pretrained(folders["tokenizer"])
    model = AutoModel.from_pretrained(folders["tokenizer"]).eval()
    assert isinstance(model, BeatsForAudioTokenization)
    for case, inputs in unpadded_cases(reference_inputs, feature_extractor).items():
        with torch.no_grad():
            token_ids = model(**inputs).token_ids
        assert torch.equal(token_ids, official_outputs["tokenizer"][case]["labels_2d"]), case


def test_labels_are_audioset_names_in_the_checkpoints_own_order(folders):
    label_dict = torch.load(OFFICIAL_TINY / "tiny_finetuned.pt", weights_only=True)["label_dict"]
    with open(AUDIOSET_LABELS_CSV, newline="", encoding="utf-8") as handle:
        names = {row["mid"]: row["display_name"] for row in csv.DictReader(handle)}
    config = json.loads((folders["finetuned"] / "config.json").read_text())
    assert config["id2label"] == {str(index): names[mid] for index, mid in label_dict.items()}
    assert config["id2label"]["0"] == "Speech" and config["id2label"]["6"] == "Babbling"
    assert config["problem_type"] == "multi_label_classification"


@pytest.mark.float_sensitive
def test_pipeline_returns_label_names_and_official_probabilities(folders, official_outputs, reference_inputs):
    classifier = pipeline("audio-classification", model=str(folders["finetuned"]), top_k=None)
    waveform = reference_inputs["individual_waveforms"][1]
    predictions = classifier(waveform[0].numpy())
    official = official_outputs["finetuned"]["individual_1"]["probs"][0]
    model = AutoModelForAudioClassification.from_pretrained(folders["finetuned"]).eval()
    tolerance = probability_tolerance(model, waveform, PROBABILITY_ATOL)
    expected = {model.config.id2label[index]: index for index in range(len(official))}
    assert {p["label"] for p in predictions} == set(expected)
    for prediction in predictions:  # no function_to_apply given: the multi-label problem_type selects the sigmoid
        index = expected[prediction["label"]]
        assert abs(prediction["score"] - official[index].item()) <= tolerance[index]


# ---------------------------------------------------------------------------------------------------------------------
# What the folder holds
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REFERENCES)
def test_folder_is_a_complete_repository(name, folders):
    folder = folders[name]
    kind = {"prenorm_pretrained": "pretrained"}.get(name, name)
    written = {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", *SHIPPED_FILES}
    assert {path.name for path in folder.iterdir()} == written | {MANIFEST}
    recorded = json.loads((folder / MANIFEST).read_text())["files"]  # the converter's record of what it wrote
    for name in written:
        data = (folder / name).read_bytes()
        assert recorded.pop(name) == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert recorded == {}
    package_dir = Path(beats_hf.__file__).parent
    for file_name in SHIPPED_FILES:
        assert (folder / file_name).read_bytes() == (package_dir / file_name).read_bytes()
    assert json.loads((folder / "config.json").read_text())["auto_map"] == CONFIG_AUTO_MAPS[kind]
    assert json.loads((folder / "preprocessor_config.json").read_text())["auto_map"] == {
        "AutoFeatureExtractor": "feature_extraction_beats.BeatsFeatureExtractor"
    }
    assert not list(folder.parent.glob(".*")), "a staging folder was left behind"


def test_written_files_hold_no_local_path(folders):
    """Model card, configs and the record are published as they are: no absolute path of the machine that converted."""
    root = next(iter(folders.values())).parent
    local_paths = {str(root).encode(), str(root.resolve()).encode(), str(REPO_ROOT).encode()}
    for folder in folders.values():
        for path in folder.iterdir():
            data = path.read_bytes()
            assert not [local for local in local_paths if local in data], path


@pytest.mark.parametrize("name", REFERENCES)
def test_model_card_front_matter_and_usage_snippet(name, folders, capsys, monkeypatch):
    card = ModelCard.load(folders[name] / "README.md")
    kind = {"prenorm_pretrained": "pretrained"}.get(name, name)
    assert card.data.license == "mit" and card.data.library_name == "transformers"
    assert card.data.pipeline_tag == ("audio-classification" if kind == "finetuned" else "feature-extraction")
    assert {"audio", "beats"} <= set(card.data.tags)
    digest = __import__("hashlib").sha256((OFFICIAL_TINY / f"tiny_{name}.pt").read_bytes()).hexdigest()
    assert digest in card.text and f"tiny_{name}.pt" in card.text and beats_hf.__version__ in card.text
    assert "padding" in card.text.lower() and "@inproceedings{chen2023beats" in card.text

    snippet = re.search(r"```python\n(.*?)```", card.text, re.DOTALL).group(1)
    assert f'repo = "{name}"  # this folder' in snippet and "trust_remote_code=True" in snippet
    capsys.readouterr()
    monkeypatch.chdir(folders[name].parent)  # the snippet loads the folder by its name, as the card says
    exec(compile(snippet, "README.md", "exec"), {"__name__": "__main__"})  # the snippet must work as written
    printed = capsys.readouterr().out
    if kind == "finetuned":
        labels = set(json.loads((folders[name] / "config.json").read_text())["id2label"].values())
        lines = printed.splitlines()
        assert len(lines) == 6 and "'label':" in lines[5]
        assert all(re.fullmatch(r"(.+): [01]\.\d{3}", line).group(1) in labels for line in lines[:5])
    elif kind == "tokenizer":
        assert re.search(r"torch.Size\(\[1, 144\]\) \[\d+(, \d+){15}\]", printed)
    else:
        assert "torch.Size([1, 144, 64]) torch.Size([1, 64])" in printed


def test_every_released_file_name_gets_its_own_facts(tmp_path):
    assert len(OFFICIAL_CHECKPOINTS) == 19
    kinds = [facts.kind for facts in OFFICIAL_CHECKPOINTS.values()]
    assert (kinds.count("pretrained"), kinds.count("finetuned"), kinds.count("tokenizer")) == (5, 10, 4)
    assert len({hub_name(name) for name in OFFICIAL_CHECKPOINTS}) == 19
    models = {kind: convert_checkpoint(torch.load(OFFICIAL_TINY / f"tiny_{kind}.pt", weights_only=True))
              for kind in ("pretrained", "finetuned", "tokenizer")}  # fmt: skip
    expected = {  # file -> phrases its card must contain (paper Tables 1 and 2 via official-beats-spec.md §14)
        "BEATs_iter1.pt": ["iteration 1", "random-projection", "47.9", "36.0", "65.9"],
        "BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt1.pt": ["iteration 3+ (AS2M)", "cpt1", "48.6", "41.8 *"],
        "BEATs_iter2_finetuned_on_AS2M_cpt2.pt": ["cpt2", "learning rate 5e-5", "48.1"],
        "Tokenizer_iter2.pt": ["acoustic tokenizer", "self-distilled from the iteration-1", "48.1", "95.1"],
        "Tokenizer_iter3_plus_AS20K.pt": ["fine-tuning on AudioSet-20K", "38.9", "96.2"],
    }
    for file_name, facts in OFFICIAL_CHECKPOINTS.items():
        card = render_model_card(models[facts.kind], facts.kind, file_name, "0" * 64, "me/x", "ok", facts)
        assert facts.title in card and "no results are listed" not in card
        for phrase in expected.get(file_name, []):
            assert phrase in card, (file_name, phrase)
    with pytest.raises(ConversionError, match="released pretrained file by name, but its contents are a finetuned"):
        render_model_card(models["finetuned"], "finetuned", "BEATs_iter3.pt", "0" * 64, "me/x", "ok",
                          OFFICIAL_CHECKPOINTS["BEATs_iter3.pt"])


def test_hub_names():
    assert hub_name("BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt1.pt") == "beats-iter3-plus-as2m-finetuned-as2m-cpt1"
    assert hub_name("BEATs_iter1.pt") == "beats-iter1"
    assert hub_name("Tokenizer_iter3_plus_AS20K.pt") == "beats-tokenizer-iter3-plus-as20k"
    assert hub_name("my model (v2).pth") == "beats-my-model-v2"


# ---------------------------------------------------------------------------------------------------------------------
# Base size: the released files' exact tensor names and shapes
# ---------------------------------------------------------------------------------------------------------------------

RELEASE_CFG = {  # cfg of BEATs_iter3_plus_AS2M.pt as printed by public projects (official-beats-spec.md §2)
    "input_patch_size": 16, "embed_dim": 512, "conv_bias": False, "encoder_layers": 12, "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12, "activation_fn": "gelu",
    "layer_wise_gradient_decay_ratio": 0.6, "layer_norm_first": False, "deep_norm": True, "dropout": 0.0,
    "attention_dropout": 0.0, "activation_dropout": 0.0, "encoder_layerdrop": 0.05, "dropout_input": 0.0,
    "conv_pos": 128, "conv_pos_groups": 16, "relative_position_embedding": True, "num_buckets": 320,
    "max_distance": 800, "gru_rel_pos": True, "finetuned_model": False, "predictor_dropout": 0.0,
    "predictor_class": 527,
}  # fmt: skip


def official_base_checkpoint(kind: str) -> dict:
    """A random official-format base checkpoint with the names and shapes listed in official_base_state_dict_keys.txt,
    layers 1..11 expanded from layer 0 and every layer's relative_attention_bias aliasing layer 0's table."""
    sections, section = {"finetuned": [], "tokenizer": []}, None
    for line in (FIXTURES / "official_base_state_dict_keys.txt").read_text().splitlines():
        if line.startswith("state_dict of release-like"):
            section = "tokenizer" if "tokenizer" in line else "finetuned"
        elif section and (match := re.fullmatch(r"\s+(\S+)\s+\(([\d, ]*)\)\s+float32", line)):
            sections[section].append((match.group(1), tuple(int(n) for n in match.group(2).split(",") if n.strip())))
    generator = torch.Generator().manual_seed(0)
    state_dict = {}
    for key, shape in sections["tokenizer" if kind == "tokenizer" else "finetuned"]:
        if kind == "pretrained" and key.startswith("predictor."):
            continue
        if key == "encoder.layers.1.self_attn.relative_attention_bias.weight":
            for layer in range(1, 12):
                state_dict[key.replace(".1.", f".{layer}.")] = state_dict[key.replace(".1.", ".0.")]
        elif key.startswith("encoder.layers.0."):
            for layer in range(12):
                state_dict[key.replace(".0.", f".{layer}.", 1)] = 0.02 * torch.randn(shape, generator=generator)
        else:
            state_dict[key] = 0.02 * torch.randn(shape, generator=generator)
    cfg = dict(RELEASE_CFG)
    if kind == "tokenizer":
        state_dict["quantize.embedding.initted"] = torch.ones(1)
        for key in ("layer_wise_gradient_decay_ratio", "finetuned_model", "predictor_dropout", "predictor_class"):
            cfg.pop(key)
        cfg.update(quant_n=1024, quant_dim=256)
    checkpoint = {"cfg": cfg, "model": state_dict}
    if kind == "finetuned":
        cfg["finetuned_model"] = True
        with open(AUDIOSET_LABELS_CSV, newline="", encoding="utf-8") as handle:
            mids = [row["mid"] for row in csv.DictReader(handle)]
        checkpoint["label_dict"] = dict(enumerate(reversed(mids)))  # a non-canonical order, as the released files
    return checkpoint


@pytest.mark.parametrize(
    "kind, entries, parameters",
    [
        ("pretrained", 250, 90_311_792),  # the paper's "90M"
        ("finetuned", 252, 90_717_055),
        ("tokenizer", 259, 91_361_392),  # official 91,624,560 less the EMA state (cluster_size, embed_avg) not kept
    ],
)
def test_base_size_official_state_dict_converts_strictly(kind, entries, parameters):
    checkpoint = official_base_checkpoint(kind)
    assert len(checkpoint["model"]) == entries  # as the key listing says for the released files
    model = convert_checkpoint(checkpoint)
    assert sum(p.numel() for p in model.parameters()) == parameters
    encoder = (model if kind == "pretrained" else model.beats).encoder
    official = checkpoint["model"]
    assert torch.equal(encoder.layers[7].self_attn.q_proj.weight, official["encoder.layers.7.self_attn.q_proj.weight"])
    assert torch.equal(encoder.layers[11].feed_forward.fc2.bias, official["encoder.layers.11.fc2.bias"])
    assert torch.equal(encoder.relative_position_bias.rel_attn_embed.weight,
                       official["encoder.layers.0.self_attn.relative_attention_bias.weight"])  # fmt: skip
    if kind == "finetuned":
        with open(AUDIOSET_LABELS_CSV, newline="", encoding="utf-8") as handle:
            names = {row["mid"]: row["display_name"] for row in csv.DictReader(handle)}
        assert model.config.num_labels == 527
        assert all(model.config.id2label[i] == names[mid] for i, mid in checkpoint["label_dict"].items())
        assert model.config.id2label[526] == "Speech"  # reversed CSV order: the checkpoint's order, not the CSV's


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: a clear message, nothing written
# ---------------------------------------------------------------------------------------------------------------------


def _reference() -> dict:
    return torch.load(OFFICIAL_TINY / "tiny_finetuned.pt", weights_only=True)


def _without(key: str) -> dict:
    checkpoint = _reference()
    del checkpoint["model"][key]
    return checkpoint


def _with_tensor(key: str, tensor: torch.Tensor) -> dict:
    checkpoint = _reference()
    checkpoint["model"][key] = tensor
    return checkpoint


def _bytes_of_reference(fraction: float) -> bytes:
    data = (OFFICIAL_TINY / "tiny_finetuned.pt").read_bytes()
    return data[: int(len(data) * fraction)]


# name -> (file content: bytes, an object to torch.save, or None for no file; parts of the expected message)
BAD_FILES = {
    "missing_file": (None, ["no such file"]),
    "empty": (b"", ["empty or truncated"]),
    "truncated": (_bytes_of_reference(0.5), ["truncated or corrupted"]),
    "random_bytes": (bytes(range(256)) * 8, ["not a PyTorch checkpoint"]),
    "unsafe_pickle": (
        {"cfg": argparse.Namespace(encoder_layers=3), "model": {"w": torch.zeros(1)}},
        ["argparse.Namespace", "weights_only=True"],
    ),
    "bare_state_dict": (torch.nn.Linear(2, 3).state_dict(), ["bare state dict of 2 tensors", "'weight'", "'bias'"]),
    "no_cfg": (
        {"state_dict": {"w": torch.zeros(1)}, "epoch": 3},
        ["no ['cfg', 'model'] entry", "'state_dict'", "'epoch'"],
    ),
    "other_model": (
        {"cfg": {"depth": 50}, "model": {"conv1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)}},
        ["no patch_embedding.weight", "conv1.weight"],
    ),
    "missing_tensor": (
        _without("encoder.layers.1.fc1.weight"),
        ["missing tensors", "beats.encoder.layers.1.feed_forward.fc1.weight"],
    ),
    "wrong_shape": (
        _with_tensor("encoder.layers.0.fc2.bias", torch.zeros(65)),
        ["shape mismatches", "official encoder.layers.0.fc2.bias", "checkpoint (65,) vs model (64,)"],
    ),
    "unknown_tensor": (
        _with_tensor("encoder.adapter.weight", torch.zeros(2)),
        ["does not know", "encoder.adapter.weight"],
    ),
    "altered_alias": (
        _with_tensor("encoder.layers.2.self_attn.relative_attention_bias.weight", torch.zeros(320, 4)),
        ["encoder.layers.2.self_attn.relative_attention_bias.weight differs from layer 0"],
    ),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_checkpoint_gives_a_clear_error_and_writes_nothing(case, tmp_path, capsys):
    content, expected = BAD_FILES[case]
    source = tmp_path / f"{case}.pt"
    if isinstance(content, bytes):
        source.write_bytes(content)
    elif content is not None:
        torch.save(content, source)
    output_root = tmp_path / "out"
    output_root.mkdir()
    assert convert(source, output_root / "model") == 1
    error = capsys.readouterr().err
    assert error.startswith(f"error: {source}: ")
    for part in expected:
        assert part in error, (part, error)
    assert list(output_root.iterdir()) == []  # neither the folder nor a staging folder


def test_unknown_cfg_key_warns_and_converts(tmp_path, capsys):
    checkpoint = _reference()
    checkpoint["cfg"]["brand_new_option"] = 1
    source = tmp_path / "tiny_finetuned.pt"
    torch.save(checkpoint, source)
    with pytest.warns(ConversionWarning, match=r"unknown to beats_hf: \['brand_new_option'\]"):
        config_from_official(checkpoint)
    assert convert(source, tmp_path / "out") == 0
    assert "warning" in capsys.readouterr().err and (tmp_path / "out" / "model.safetensors").is_file()


def test_output_folder_policy(tmp_path, capsys):
    """A foreign folder is never touched; an earlier conversion is replaced only by a successful one."""
    good, broken = OFFICIAL_TINY / "tiny_pretrained.pt", tmp_path / "broken.pt"
    broken.write_bytes(_bytes_of_reference(0.3))

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert convert(good, foreign) == 1
    assert f"no valid {MANIFEST}" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    target = tmp_path / "model"
    assert convert(good, target) == 0
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    assert convert(broken, target) == 1
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before

    assert convert(OFFICIAL_TINY / "tiny_finetuned.pt", target) == 0
    assert json.loads((target / "config.json").read_text())["architectures"] == ["BeatsForAudioClassification"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.pt", "foreign", "model"]  # no staging leftovers


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in folder.rglob("*")}


def refused(capsys, folder: Path, *names: str) -> str:
    """The one-line refusal for `folder`, checked to name each of `names`."""
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{folder} holds files beats_hf did not write" in error, error
    assert "left untouched" in error and all(name in error for name in names), (names, error)
    return error


def test_a_finetuning_output_folder_is_never_replaced(tmp_path, capsys):
    """Before the record, a config.json with a beats_hf model_type was enough to have a folder replaced."""
    run = tmp_path / "run"
    (run / "checkpoint-500").mkdir(parents=True)
    (run / "checkpoint-500" / "optimizer.pt").write_bytes(b"optimizer state")
    (run / "config.json").write_text(json.dumps({"model_type": "beats_hf"}))
    (run / "trainer_state.json").write_text("{}")
    (run / "all_results.json").write_text('{"eval_accuracy": 0.9}')
    before = snapshot(run)
    assert convert(OFFICIAL_TINY / "tiny_finetuned.pt", run) == 1
    refused(capsys, run, f"no valid {MANIFEST}", "checkpoint-500/", "trainer_state.json", "all_results.json")
    assert snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no work folder left either


def test_files_added_to_or_changed_in_a_conversion_folder_are_never_replaced(tmp_path, capsys):
    good = OFFICIAL_TINY / "tiny_pretrained.pt"
    target = tmp_path / "model"
    assert convert(good, target) == 0
    assert oct(target.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # a plain folder, not a private temp one

    (target / "notes.txt").write_text("my notes")
    (target / "eval").mkdir()
    before = snapshot(target)
    assert convert(good, target) == 1
    refused(capsys, target, ": eval/, notes.txt;")
    assert snapshot(target) == before
    (target / "notes.txt").unlink()
    (target / "eval").rmdir()

    card = (target / "README.md").read_text()
    (target / "README.md").write_text(card + "\nMy evaluation: ...\n")
    assert convert(good, target) == 1
    refused(capsys, target, "README.md (changed since beats_hf wrote it)")
    assert (target / "README.md").read_text().endswith("My evaluation: ...\n")

    (target / "README.md").write_text(card)
    record = (target / MANIFEST).read_bytes()
    (target / MANIFEST).unlink()
    assert convert(good, target) == 1
    refused(capsys, target, f"no valid {MANIFEST}", "README.md", "model.safetensors")

    (target / MANIFEST).write_bytes(record)  # with its record back, the unchanged folder is the converter's again
    (target / "model.safetensors").unlink()  # deleting one of its files takes nothing from the user
    assert convert(OFFICIAL_TINY / "tiny_finetuned.pt", target) == 0
    assert json.loads((target / "config.json").read_text())["architectures"] == ["BeatsForAudioClassification"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# Run in a child process: a conversion that SIGKILLs itself at `moment`, as a user's kill or a crash would end it.
KILLED_CONVERSION = """
import os, pathlib, signal, sys
import conversion.publishing
from conversion.convert_beats_original_to_hf import main

moment, source, target = sys.argv[1:]
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if moment == "verify":  # the new folder is fully written in the work folder, the target not yet touched
    conversion.publishing.verify_folder = die
elif moment == "swap":  # the earlier conversion was just moved aside, the new one not yet in place
    rename = pathlib.Path.rename
    def rename_then_die(self, destination):
        result = rename(self, destination)
        if pathlib.Path(destination).name == "old":
            die()
        return result
    pathlib.Path.rename = rename_then_die
main(["--checkpoint_path", source, "--pytorch_dump_folder_path", target])
"""


def killed_conversion(moment: str, source: Path, target: Path) -> Path:
    """Convert `source` into `target` in a child process killed at `moment`; returns the work folder it left."""
    pythonpath = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    process = subprocess.run([sys.executable, "-c", KILLED_CONVERSION, moment, str(source), str(target)],
                             env={**os.environ, "PYTHONPATH": pythonpath}, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert process.returncode == -9, process.stderr[-3000:]
    (work,) = target.parent.glob(f".{target.name}.partial-*")
    return work


def test_next_conversion_removes_its_own_stale_work_folders_only(tmp_path, capsys):
    target = tmp_path / "model"
    assert convert(OFFICIAL_TINY / "tiny_pretrained.pt", target) == 0
    before = snapshot(target)
    stale = killed_conversion("verify", OFFICIAL_TINY / "tiny_finetuned.pt", target)
    assert snapshot(target) == before and (stale / "new" / "model.safetensors").is_file()

    unmarked = tmp_path / ".model.partial-mine"  # our name pattern, but nothing says it is ours
    shutil.copytree(stale / "new", unmarked)
    others = []  # killed conversions to other targets, one of them named with our prefix
    for other_target in ("other", "model.partial-v2"):
        others.append(tmp_path / f".{other_target}.partial-abc")
        shutil.copytree(stale, others[-1])
        marker = {"written_by": "beats_hf conversion", "target": other_target}
        (others[-1] / PARTIAL_MARKER).write_text(json.dumps(marker))
    running = tmp_path / ".model.partial-running"  # a conversion that is still running holds the marker's lock
    shutil.copytree(stale, running)
    kept = {folder: snapshot(folder) for folder in (unmarked, *others, running)}

    with open(running / PARTIAL_MARKER) as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        assert convert(OFFICIAL_TINY / "tiny_finetuned.pt", target) == 0
    assert not stale.exists()
    assert {folder: snapshot(folder) for folder in kept} == kept
    assert json.loads((target / "config.json").read_text())["architectures"] == ["BeatsForAudioClassification"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", *(folder.name for folder in kept)])


def test_a_kill_while_swapping_folders_loses_no_conversion(tmp_path, monkeypatch, capsys):
    """Killed between moving the earlier conversion aside and renaming the new one into place: the next conversion
    puts the earlier one back before anything else, so even a failing one leaves it as it was."""
    import conversion.publishing

    target = tmp_path / "model"
    assert convert(OFFICIAL_TINY / "tiny_pretrained.pt", target) == 0
    before = snapshot(target)
    stale = killed_conversion("swap", OFFICIAL_TINY / "tiny_finetuned.pt", target)
    assert not target.exists() and snapshot(stale / "old") == before  # the moment this test is about

    def failing_check(folder, kind, check):
        raise ConversionError("the saved model does not reproduce the outputs of the converted model.")

    monkeypatch.setattr(conversion.publishing, "verify_folder", failing_check)
    assert convert(OFFICIAL_TINY / "tiny_finetuned.pt", target) == 1
    assert snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_failure_while_writing_leaves_no_half_written_folder(tmp_path, monkeypatch, capsys):
    """A failure at the last step (the reload check) removes the staging folder and keeps an earlier conversion."""
    import conversion.publishing

    target = tmp_path / "model"
    assert convert(OFFICIAL_TINY / "tiny_pretrained.pt", target) == 0
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def failing_check(folder, kind, check):
        assert (folder / "model.safetensors").is_file()  # the staging folder was fully written by then
        raise ConversionError("the saved model does not reproduce the outputs of the converted model.")

    monkeypatch.setattr(conversion.publishing, "verify_folder", failing_check)
    assert convert(OFFICIAL_TINY / "tiny_finetuned.pt", target) == 1
    assert convert(OFFICIAL_TINY / "tiny_finetuned.pt", tmp_path / "new") == 1
    assert "does not reproduce" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_script_runs_from_any_directory_and_fails_without_traceback(tmp_path):
    run = [sys.executable, str(SCRIPT), "--pytorch_dump_folder_path", str(tmp_path / "out")]
    ok = subprocess.run([*run, "--checkpoint_path", str(OFFICIAL_TINY / "tiny_tokenizer.pt")], cwd=tmp_path,
                        capture_output=True, text=True, timeout=300)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "converted tiny_tokenizer.pt (tokenizer)" in ok.stdout
    bad = subprocess.run([*run, "--checkpoint_path", str(tmp_path / "nope.pt")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 1 and "no such file" in bad.stderr and "Traceback" not in bad.stderr

def test_replace_hub_files_needs_push_to_hub(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        convert(OFFICIAL_TINY / "tiny_tokenizer.pt", tmp_path / "out", "--replace_hub_files")
    assert exit_info.value.code == 2
    assert "--replace_hub_files only applies with --push_to_hub" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
