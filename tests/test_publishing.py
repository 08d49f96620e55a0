"""Publishing to the Hub, end to end, against the local Hub-protocol server (tests/hub_server.py).

The converter pushes the fine-tuned reference checkpoint over a repository holding an earlier push and a colleague's
file; then fresh Python processes in which `import beats_hf` fails load it by repo id with `trust_remote_code=True`
(model, feature extractor, pipeline, the model card's own snippet) and must give the official probabilities (from raw
audio: to the model's tolerance plus the fbank's float32 rounding carried through the model); after
`snapshot_download` the same works with HF_HUB_OFFLINE=1 and no request.
"""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import OFFICIAL_TINY, REPO_ROOT
from fbank_rounding import probability_tolerance
from hub_server import local_hub

from conversion.beats_conversion import convert_checkpoint
from conversion.publishing import CONFIG_AUTO_MAPS, MANIFEST, SHIPPED_FILES, write_manifest

SCRIPT = REPO_ROOT / "conversion" / "convert_beats_original_to_hf.py"
REPO_ID = "user/beats-tiny-finetuned"
PROBABILITY_ATOL = 1e-5
REPOSITORY_FILES = {".gitattributes", "config.json", "model.safetensors", "preprocessor_config.json", "README.md",
                    MANIFEST, *SHIPPED_FILES}  # fmt: skip
KEPT = "kept in the repository (not written by beats_hf, or changed since; --replace_hub_files deletes them): "
COLLEAGUE_NOTES = b"# Notes\nEvaluated on our own data: see the discussion.\n"

# Prepended to every client process: beats_hf cannot be imported there, whatever sys.path holds.
BLOCK_BEATS_HF = """
import importlib.abc, sys

class _BlockBeatsHf(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "beats_hf":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, _BlockBeatsHf())
try:
    import beats_hf
    BEATS_HF_IMPORT_ERROR = None
except ImportError as error:
    BEATS_HF_IMPORT_ERROR = str(error)
"""

# Loads the pushed repo by id and records what a user would get.
CLIENT = """
import contextlib, io, json, re, sys
import torch
from huggingface_hub import ModelCard, hf_hub_download, snapshot_download
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification, pipeline

repo_id, fixtures, result_path, online = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "online"
inputs = torch.load(f"{fixtures}/inputs.pt", weights_only=True)
clips = {"single_unpadded": inputs["single_waveform"][0]}
clips.update({f"individual_{i}": w[0] for i, w in enumerate(inputs["individual_waveforms"])})

feature_extractor = AutoFeatureExtractor.from_pretrained(repo_id, trust_remote_code=True)
model = AutoModelForAudioClassification.from_pretrained(repo_id, trust_remote_code=True).eval()
probabilities = {}
for case, clip in clips.items():
    features = feature_extractor(clip.numpy(), sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        probabilities[case] = model(**features).logits.sigmoid()[0].tolist()
result = {
    "beats_hf_import_error": BEATS_HF_IMPORT_ERROR,
    "modules": [type(model).__module__, type(feature_extractor).__module__],
    "probabilities": probabilities,
    "id2label": model.config.id2label,
}
if online:
    classifier = pipeline("audio-classification", model=repo_id, trust_remote_code=True)
    result["pipeline"] = classifier(clips["individual_0"].numpy(), top_k=None)
    result["card_data"] = ModelCard.load(repo_id).data.to_dict()
    readme = open(hf_hub_download(repo_id, "README.md"), encoding="utf-8").read()
    snippet = re.search(r"```python\\n(.*?)```", readme, re.DOTALL).group(1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(snippet, "README.md", "exec"), {"__name__": "__main__"})
    result["snippet_output"] = printed.getvalue()
    result["snapshot"] = sorted(p.name for p in __import__("pathlib").Path(snapshot_download(repo_id)).iterdir())
json.dump(result, open(result_path, "w"))
"""


@pytest.fixture(scope="module")
def hub():
    with local_hub() as server:
        yield server


def run_script(args: list[str], env: dict, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def run_client(env: dict, cwd, mode: str) -> dict:
    result_path = cwd / f"client_{mode}.json"
    process = subprocess.run(
        [sys.executable, "-c", BLOCK_BEATS_HF + CLIENT, REPO_ID, str(OFFICIAL_TINY), str(result_path), mode],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-4000:]
    return json.loads(result_path.read_text())


def earlier_push(hub, repo_id: str, work, recorded: dict[str, bytes], others: dict[str, bytes]) -> None:
    """Make `repo_id` hold an earlier push of `recorded` (files with the converter's record, as an earlier beats_hf
    version that wrote them would have pushed them), then `others` uploaded by a colleague (new files or changes)."""
    folder = work / f"earlier-{repo_id.replace('/', '-')}"
    folder.mkdir()
    for name, data in recorded.items():
        (folder / name).write_bytes(data)
    write_manifest(folder)
    # In a client process: huggingface_hub reads HF_HUB_DISABLE_XET at import, so this process's client would use Xet.
    code = (
        "import sys; from huggingface_hub import HfApi; api = HfApi(); repo, folder = sys.argv[1:3]\n"
        "api.create_repo(repo); api.upload_folder(repo_id=repo, folder_path=folder)\n"
        "for name, data in eval(sys.argv[3]).items():\n"
        "    api.upload_file(path_or_fileobj=data, path_in_repo=name, repo_id=repo)\n"
    )
    subprocess.run([sys.executable, "-c", code, repo_id, str(folder), repr(others)], env=hub.env(work), check=True,
                   timeout=120)  # fmt: skip
    assert set(recorded) | set(others) | {MANIFEST} <= set(hub.files(repo_id))


@pytest.fixture(scope="module")
def published(hub, tmp_path_factory):
    """Push the fine-tuned reference over a repo holding an earlier push and a colleague's notes, then load it online
    and offline."""
    work = tmp_path_factory.mktemp("publish")
    env = hub.env(work)
    # The earlier push wrote weights under the old name, and a small file (the Hub stores the two differently).
    earlier = {"pytorch_model.bin": b"old weights", "generation_config.json": b"{}"}
    earlier_push(hub, REPO_ID, work, recorded=earlier, others={"notes.md": COLLEAGUE_NOTES})

    args = ["--checkpoint_path", str(OFFICIAL_TINY / "tiny_finetuned.pt"), "--pytorch_dump_folder_path",
            str(work / "converted"), "--push_to_hub", REPO_ID]  # fmt: skip
    process = run_script(args, env, work)
    assert process.returncode == 0, process.stderr
    assert f"pushed to {hub.endpoint}/{REPO_ID}" in process.stdout

    online = run_client(env, work, "online")
    requests_before = len(hub.requests)
    offline = run_client({**env, "HF_HUB_OFFLINE": "1"}, work, "offline")
    return {"online": online, "offline": offline, "offline_requests": len(hub.requests) - requests_before,
            "stdout": process.stdout, "work": work}  # fmt: skip


@pytest.fixture(scope="module")
def official() -> dict:
    return torch.load(OFFICIAL_TINY / "outputs_finetuned.pt", weights_only=True)["cases"]


@pytest.fixture(scope="module")
def tolerances(reference_inputs) -> dict[str, torch.Tensor]:
    """Per case and class: how far probabilities from raw audio may be from the official ones."""
    model = convert_checkpoint(torch.load(OFFICIAL_TINY / "tiny_finetuned.pt", weights_only=True)).eval()
    waveforms = {"single_unpadded": reference_inputs["single_waveform"]}
    waveforms.update({f"individual_{i}": w for i, w in enumerate(reference_inputs["individual_waveforms"])})
    return {case: probability_tolerance(model, waveform, PROBABILITY_ATOL) for case, waveform in waveforms.items()}


def test_push_replaces_its_own_earlier_files_and_keeps_a_colleagues(hub, published):
    """The earlier push's files that this one no longer has are the converter's own, unchanged, so they go (the
    stale pytorch_model.bin would otherwise sit beside model.safetensors); notes.md was never the converter's."""
    files = hub.files(REPO_ID)
    assert set(files) == REPOSITORY_FILES | {"notes.md"} and files["notes.md"] == COLLEAGUE_NOTES
    assert files[MANIFEST] == (published["work"] / "converted" / MANIFEST).read_bytes()
    lines = published["stdout"].splitlines()
    assert "deleted from the repository: generation_config.json, pytorch_model.bin" in lines
    assert KEPT + "notes.md" in lines
    local_paths = [str(published["work"]), str(published["work"].resolve()), str(REPO_ROOT)]
    for name, data in files.items():  # what the Hub shows holds no path of the machine that converted
        assert not [path for path in local_paths if path.encode() in data], name
    assert json.loads(files["config.json"])["auto_map"] == CONFIG_AUTO_MAPS["finetuned"]
    assert json.loads(files["preprocessor_config.json"])["auto_map"] == {
        "AutoFeatureExtractor": "feature_extraction_beats.BeatsFeatureExtractor"
    }


@pytest.mark.float_sensitive
@pytest.mark.parametrize("mode", ["online", "offline"])
def test_remote_code_without_beats_hf_gives_official_probabilities(published, official, tolerances, mode):
    result = published[mode]
    assert result["beats_hf_import_error"] and "beats_hf" in result["beats_hf_import_error"]
    assert all(module.startswith("transformers_modules.") for module in result["modules"]), result["modules"]
    assert set(result["probabilities"]) == {"single_unpadded", "individual_0", "individual_1", "individual_2"}
    for case, probabilities in result["probabilities"].items():
        error = (torch.tensor(probabilities, dtype=torch.float64) - official[case]["probs"][0]).abs()
        assert (error <= tolerances[case]).all(), (mode, case, error, tolerances[case])


def test_offline_loading_makes_no_request(published):
    assert published["offline_requests"] == 0


@pytest.mark.float_sensitive
def test_pipeline_by_repo_id_returns_label_names(published, official, tolerances):
    result = published["online"]
    expected = {result["id2label"][str(i)]: i for i in range(len(official["individual_0"]["probs"][0]))}
    assert "Speech" in expected and "Babbling" in expected
    assert {p["label"] for p in result["pipeline"]} == set(expected)
    for prediction in result["pipeline"]:
        index = expected[prediction["label"]]
        error = abs(prediction["score"] - official["individual_0"]["probs"][0][index].item())
        assert error <= tolerances["individual_0"][index]


def test_model_card_metadata_and_snippet(published):
    result = published["online"]
    data = result["card_data"]
    assert data["license"] == "mit" and data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "audio-classification" and "beats" in data["tags"]
    lines = result["snippet_output"].splitlines()
    assert len(lines) == 6 and all(line.split(": ")[0] in result["id2label"].values() for line in lines[:5])
    assert "'label':" in lines[5]
    assert set(result["snapshot"]) == REPOSITORY_FILES | {"notes.md"}


def test_push_keeps_changed_files_unless_told_to_replace_them(hub, tmp_path):
    """A file the earlier push wrote but a colleague changed since is theirs now; --replace_hub_files is the way to
    make the repository exactly the folder."""
    repo_id = "user/beats-tiny-pretrained-shared"
    earlier = {"pytorch_model.bin": b"old weights", "extra.json": b'{"a": 1}'}
    changed = {"pytorch_model.bin": b"new weights", "extra.json": b'{"a": 2}', "eval/results.json": b"{}"}
    earlier_push(hub, repo_id, tmp_path, recorded=earlier, others=changed)
    args = ["--checkpoint_path", str(OFFICIAL_TINY / "tiny_pretrained.pt"), "--pytorch_dump_folder_path",
            str(tmp_path / "converted"), "--push_to_hub", repo_id]  # fmt: skip

    process = run_script(args, hub.env(tmp_path), tmp_path)
    assert process.returncode == 0, process.stderr
    files = hub.files(repo_id)
    assert set(files) == REPOSITORY_FILES | set(changed)
    assert all(files[name] == data for name, data in changed.items())
    assert KEPT + "eval/results.json, extra.json, pytorch_model.bin" in process.stdout.splitlines()
    assert "deleted from the repository" not in process.stdout

    process = run_script([*args, "--replace_hub_files"], hub.env(tmp_path), tmp_path)
    assert process.returncode == 0, process.stderr
    assert set(hub.files(repo_id)) == REPOSITORY_FILES
    assert "deleted from the repository: eval/results.json, extra.json, pytorch_model.bin" in process.stdout


def test_batch_mode_converts_and_pushes_the_good_files(hub, tmp_path):
    sources = tmp_path / "official"
    sources.mkdir()
    for name in ("pretrained", "finetuned", "tokenizer", "prenorm_pretrained"):
        shutil.copyfile(OFFICIAL_TINY / f"tiny_{name}.pt", sources / f"tiny_{name}.pt")
    (sources / "broken.pt").write_bytes((OFFICIAL_TINY / "tiny_pretrained.pt").read_bytes()[:2000])
    (sources / "notes.txt").write_text("not a checkpoint, not looked at")

    args = ["--checkpoint_dir", str(sources), "--pytorch_dump_folder_path", str(tmp_path / "out"),
            "--push_to_hub", "beats-org", "--private"]  # fmt: skip
    process = run_script(args, hub.env(tmp_path), tmp_path)
    assert process.returncode == 1  # one file failed
    summary = process.stdout
    assert "4 of 5 converted and pushed" in summary
    broken_row = next(line for line in summary.splitlines() if line.startswith("broken.pt"))
    assert "error: the file is truncated or corrupted" in broken_row
    expected_kinds = {"pretrained": "pretrained", "finetuned": "finetuned", "tokenizer": "tokenizer",
                      "prenorm-pretrained": "pretrained"}  # fmt: skip
    for name, kind in expected_kinds.items():
        repo_id = f"beats-org/beats-tiny-{name}"
        assert hub.repos[("model", repo_id)].private
        files = hub.files(repo_id)
        assert set(files) == REPOSITORY_FILES
        assert json.loads(files["config.json"])["auto_map"] == CONFIG_AUTO_MAPS[kind]
        assert f'repo = "{repo_id}"' in files["README.md"].decode()
        assert (tmp_path / "out" / f"beats-tiny-{name}" / "model.safetensors").is_file()
        row = next(line for line in summary.splitlines() if line.startswith(f"tiny_{name.replace('-', '_')}.pt"))
        assert f"pushed to {hub.endpoint}/{repo_id}" in row
    assert not any("broken" in repo_id for _, repo_id in hub.repos)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"beats-tiny-{n}" for n in expected_kinds)
