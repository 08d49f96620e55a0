"""The local Hub server works with the real huggingface_hub and transformers clients.

Client code runs in subprocesses because huggingface_hub reads HF_ENDPOINT at import time.
"""

import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hub_server import local_hub

BIG_SIZE = 10 * 1024 * 1024 + 123  # just above the 10 MB LFS threshold, and not a multiple of any chunk size


@pytest.fixture
def hub():
    with local_hub() as server:
        yield server


def run_client(code: str, env: dict[str, str], *args: str) -> dict:
    """Run `code` in a fresh interpreter; it must print one JSON object as its last stdout line."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"client failed:\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_hub_client_round_trip(hub, tmp_path: Path):
    upload = tmp_path / "upload"
    (upload / "weights").mkdir(parents=True)
    (upload / "notes.txt").write_text("a small regular file\n")
    big = os.urandom(BIG_SIZE)
    (upload / "weights" / "big.dat").write_bytes(big)  # .dat is no LFS suffix: size alone must force LFS
    env = hub.env(tmp_path)

    online = run_client(
        """
        import json, sys
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download
        from huggingface_hub.errors import HfHubHTTPError

        upload, repo_id = sys.argv[1], "user/demo"
        api = HfApi()
        out = {"whoami": api.whoami()["name"]}
        url = api.create_repo(repo_id)
        out["url_repo_id"] = url.repo_id
        out["exist_ok"] = api.create_repo(repo_id, exist_ok=True).repo_id
        try:
            api.create_repo(repo_id)
            out["conflict"] = None
        except HfHubHTTPError as err:
            out["conflict"] = err.response.status_code
        first = api.upload_folder(folder_path=upload, repo_id=repo_id, commit_message="add folder")
        second = api.upload_file(path_or_fileobj=b"hello", path_in_repo="extra.txt", repo_id=repo_id)
        out["commits"] = [first.oid, second.oid]
        info = api.model_info(repo_id)
        out["sha"] = info.sha
        out["siblings"] = {s.rfilename: (s.size, s.lfs.sha256 if s.lfs else None) for s in info.siblings}
        out["first_rev_files"] = sorted(s.rfilename for s in api.model_info(repo_id, revision=first.oid).siblings)
        out["files"] = sorted(api.list_repo_files(repo_id))
        out["top_level"] = sorted(e.path for e in api.list_repo_tree(repo_id))
        out["history"] = [c.commit_id for c in api.list_repo_commits(repo_id)]
        out["notes"] = open(hf_hub_download(repo_id, "notes.txt"), encoding="utf-8").read()
        out["big_path"] = hf_hub_download(repo_id, "weights/big.dat")
        out["snapshot"] = snapshot_download(repo_id)
        # Unchanged files are skipped client-side thanks to the preupload "oid": nothing new is committed.
        out["noop"] = api.upload_folder(folder_path=upload, repo_id=repo_id).oid
        print(json.dumps(out))
        """,
        env,
        str(upload),
    )
    assert online["whoami"] == "user"
    assert online["url_repo_id"] == online["exist_ok"] == "user/demo"
    assert online["conflict"] == 409
    first, second = online["commits"]
    assert len({first, second}) == 2 and all(len(c) == 40 for c in online["commits"])
    assert online["sha"] == second == online["noop"]  # "main" resolves to the latest commit
    assert online["history"][:2] == [second, first]
    assert online["files"] == [".gitattributes", "extra.txt", "notes.txt", "weights/big.dat"]
    assert online["first_rev_files"] == [".gitattributes", "notes.txt", "weights/big.dat"]
    assert set(online["top_level"]) == {"weights", ".gitattributes", "extra.txt", "notes.txt"}
    size, lfs_sha = online["siblings"]["weights/big.dat"]
    assert size == BIG_SIZE and lfs_sha is not None
    assert online["siblings"]["notes.txt"][1] is None  # small text stays a regular git file
    assert online["notes"] == "a small regular file\n"
    assert Path(online["big_path"]).read_bytes() == big
    snap = Path(online["snapshot"])
    assert (snap / "weights" / "big.dat").read_bytes() == big
    assert (snap / "extra.txt").read_bytes() == b"hello"
    assert hub.files("user/demo")["weights/big.dat"] == big
    # The large file went through the LFS batch endpoint and a PUT, not the base64 commit payload.
    assert any(r["method"] == "PUT" and r["path"].startswith("/lfs-storage/") for r in hub.requests)
    assert not hub.unhandled(), hub.unhandled()

    seen = len(hub.requests)
    offline = run_client(
        """
        import json
        from huggingface_hub import hf_hub_download, snapshot_download

        big = hf_hub_download("user/demo", "weights/big.dat")
        print(json.dumps({"big": big, "snap": snapshot_download("user/demo")}))
        """,
        {**env, "HF_HUB_OFFLINE": "1"},
    )
    assert Path(offline["big"]).read_bytes() == big
    assert Path(offline["snap"]) == snap
    assert len(hub.requests) == seen  # served from the cache alone


def test_transformers_push_and_load(hub, tmp_path: Path):
    env = hub.env(tmp_path)
    digest = """
        import hashlib

        def digest(model):
            state = model.state_dict()
            return hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
        """
    result = run_client(
        digest
        + """
        import json
        import torch
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
        )
        model = BertModel(config)
        commit = model.push_to_hub("tiny")  # no namespace: the server puts it under the token's user
        loaded = BertModel.from_pretrained("user/tiny")
        ref, got = model.state_dict(), loaded.state_dict()
        same = sorted(ref) == sorted(got) and all(torch.equal(ref[k], got[k]) for k in ref)
        out = {"same": same, "oid": commit.oid, "hidden": loaded.config.hidden_size, "digest": digest(model)}
        print(json.dumps(out))
        """,
        env,
    )
    assert result["same"] and result["hidden"] == 32
    files = hub.files("user/tiny")
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    assert hub.api().model_info("user/tiny").sha == result["oid"]
    assert not hub.unhandled(), hub.unhandled()

    seen = len(hub.requests)
    offline = run_client(
        digest
        + """
        import json
        from transformers import BertModel

        print(json.dumps({"digest": digest(BertModel.from_pretrained("user/tiny"))}))
        """,
        {**env, "HF_HUB_OFFLINE": "1"},
    )
    assert offline["digest"] == result["digest"]
    assert len(hub.requests) == seen


def test_datasets_push_and_load(hub, tmp_path: Path):
    result = run_client(
        """
        import json
        from datasets import Dataset, load_dataset

        Dataset.from_dict({"x": [1, 2, 3], "y": ["a", "b", "c"]}).push_to_hub("user/table")
        print(json.dumps(load_dataset("user/table", split="train").to_dict()))
        """,
        hub.env(tmp_path),
    )
    assert result == {"x": [1, 2, 3], "y": ["a", "b", "c"]}
    assert not hub.unhandled(), hub.unhandled()


def test_in_process_api_and_dataset_repo(hub, tmp_path: Path):
    from huggingface_hub import hf_hub_download

    api = hub.api()
    repo_id = api.create_repo("user/data", repo_type="dataset").repo_id
    api.upload_file(path_or_fileobj=b"x,y\n1,2\n", path_in_repo="data/train.csv", repo_id=repo_id, repo_type="dataset")
    assert api.list_repo_files(repo_id, repo_type="dataset") == [".gitattributes", "data/train.csv"]
    assert [p.path for p in api.get_paths_info(repo_id, ["data", "nope"], repo_type="dataset")] == ["data"]
    path = hf_hub_download(
        repo_id, "data/train.csv", repo_type="dataset", endpoint=hub.endpoint, cache_dir=tmp_path, token="x"
    )
    assert Path(path).read_bytes() == b"x,y\n1,2\n"
    assert api.file_exists(repo_id, "data/train.csv", repo_type="dataset")
    assert not api.file_exists(repo_id, "data/test.csv", repo_type="dataset")
    assert not api.repo_exists("user/missing")
    assert not hub.unhandled(), hub.unhandled()


def test_local_hub_stops():
    with local_hub() as server:
        endpoint, root = server.endpoint, server.root
        with urllib.request.urlopen(f"{endpoint}/api/whoami-v2") as response:
            assert json.load(response)["name"] == "user"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{endpoint}/api/models/user/none")
        assert err.value.code == 404 and err.value.headers["X-Error-Code"] == "RepoNotFound"
    assert not root.exists()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{endpoint}/api/whoami-v2", timeout=2)
