"""A small local server that speaks enough of the Hugging Face Hub REST protocol for the real `huggingface_hub` client.

Tests use it to run `push_to_hub` / `from_pretrained` / `snapshot_download` end to end without internet::

    with local_hub() as hub:
        env = hub.env(tmp_path)  # full environment for a subprocess pointed at the server
        subprocess.run([sys.executable, "-c", code], env=env, check=True)

As a pytest fixture (the server starts in milliseconds, so one per test keeps tests independent)::

    @pytest.fixture
    def hub():
        with local_hub() as server:
            yield server

`huggingface_hub` reads `HF_ENDPOINT` once, at import time, so client code that must go through the server is best
run in a subprocess with `hub.env(...)`. In-process, only calls that take an explicit endpoint reach it
(`hub.api()` gives an `HfApi` bound to the server; `hf_hub_download(..., endpoint=hub.endpoint)`).

State: repo -> commits, each commit a full snapshot {path: _FileEntry}; file bytes live content-addressed (by sha256)
in a temporary directory. Xet is not spoken: clients must run with `HF_HUB_DISABLE_XET=1` (see `env`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:
    from huggingface_hub import HfApi

__all__ = ["HubServer", "local_hub"]

USER = "user"
TOKEN = "hf_local_test_token"
# URL prefix of each repo type in resolve / LFS URLs ("model" has none), as in huggingface_hub.constants.
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# The real Hub puts files above 10 MB, and files matching the default .gitattributes patterns, in LFS.
LFS_THRESHOLD = 10 * 1024 * 1024
LFS_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".msgpack", ".npy", ".npz", ".pkl",
    ".arrow", ".parquet", ".zip", ".gz", ".tar", ".zst", ".wav", ".flac", ".mp3", ".ogg",
)  # fmt: skip
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES).encode()
CHUNK = 1 << 20


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class _FileEntry:
    sha256: str
    size: int
    lfs: bool
    git_oid: str  # git blob sha1 of the content (regular) or of the LFS pointer file (LFS)

    @property
    def etag(self) -> str:
        # The Hub's ETag is the git blob sha1 for regular files and the sha256 for LFS files.
        return self.sha256 if self.lfs else self.git_oid

    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()


@dataclass
class _Commit:
    sha: str
    parent: str | None
    files: dict[str, _FileEntry]
    title: str
    message: str
    date: str


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, _Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch / "refs/pr/N" -> commit sha
    num_prs: int = 0

    def resolve(self, revision: str) -> _Commit | None:
        sha = self.refs.get(revision, revision)
        return self.commits.get(sha)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, **body):
        super().__init__(message)
        self.status, self.message, self.code, self.headers, self.body = status, message, code, headers or {}, body


class HubServer:
    """Hub-protocol server on 127.0.0.1 (free port) with repos kept under a temporary directory."""

    def __init__(self, root: str | os.PathLike | None = None):
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="local_hub_") if root is None else root)
        self.blob_dir = self.root / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.requests: list[dict[str, Any]] = []  # one entry per request, for debugging failed tests
        self.lock = threading.RLock()
        self._counter = itertools.count()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> HubServer:
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # ---- client helpers --------------------------------------------------------------------------------------
    def env(self, tmp_path: str | os.PathLike, **extra: str) -> dict[str, str]:
        """Full environment for a subprocess whose HF clients talk to this server and cache under `tmp_path`.

        Inherited HF_*/HUGGINGFACE_* variables are dropped so that an outer offline flag or cache cannot leak in.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
        env.update(
            HF_ENDPOINT=self.endpoint,
            HF_TOKEN=TOKEN,
            HF_HOME=str(Path(tmp_path) / "hf_home"),
            HF_HUB_DISABLE_XET="1",  # otherwise uploads/downloads of large files go to the Xet storage service
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
        )
        env.update(extra)
        return env

    def api(self) -> HfApi:
        """An in-process `HfApi` bound to this server (module-level helpers still use the import-time endpoint)."""
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=TOKEN)

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Server-side view of a repo snapshot, for assertions."""
        with self.lock:
            commit = self._commit(repo_type, repo_id, revision)
            return {path: self._read_blob(entry.sha256) for path, entry in commit.files.items()}

    def unhandled(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r.get("unhandled")]

    # ---- storage ---------------------------------------------------------------------------------------------
    def _blob_path(self, sha256: str) -> Path:
        return self.blob_dir / sha256

    def _read_blob(self, sha256: str) -> bytes:
        return self._blob_path(sha256).read_bytes()

    def _store_blob(self, data: bytes, lfs: bool) -> _FileEntry:
        sha256 = hashlib.sha256(data).hexdigest()
        path = self._blob_path(sha256)
        if not path.exists():
            tmp = path.with_suffix(f".tmp{next(self._counter)}")
            tmp.write_bytes(data)
            tmp.replace(path)
        return self._entry(sha256, len(data), lfs, data)

    def _entry(self, sha256: str, size: int, lfs: bool, data: bytes | None = None) -> _FileEntry:
        if lfs:
            pointer = _FileEntry(sha256, size, True, "").pointer()
            return _FileEntry(sha256, size, True, _git_blob_sha1(pointer))
        data = self._read_blob(sha256) if data is None else data
        return _FileEntry(sha256, size, False, _git_blob_sha1(data))

    def _new_sha(self, *parts: str) -> str:
        # Unique per commit even for identical trees: the counter makes every commit a new 40-hex id.
        return hashlib.sha1("\0".join((*parts, str(next(self._counter)))).encode()).hexdigest()

    def _repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository Not Found for {repo_type} '{repo_id}'.", "RepoNotFound")
        return repo

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> _Commit:
        commit = self._repo(repo_type, repo_id).resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _add_commit(self, repo: _Repo, ref: str, files: dict[str, _FileEntry], title: str, message: str) -> _Commit:
        parent = repo.refs.get(ref)
        sha = self._new_sha(repo.repo_id, parent or "", title, *sorted(f"{p}:{e.sha256}" for p, e in files.items()))
        commit = _Commit(sha, parent, files, title, message, _now())
        repo.commits[sha] = commit
        repo.refs[ref] = sha
        return commit

    def repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.endpoint}/{URL_PREFIX[repo_type]}{repo_id}"

    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False) -> _Repo:
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                raise HubError(
                    409, f"You already created this {repo_type} repo", url=self.repo_url(repo_type, repo_id)
                )
            repo = _Repo(repo_type, repo_id, private, _now())
            # Like the Hub, a new repo starts with one commit holding .gitattributes, so "main" always resolves.
            self._add_commit(
                repo, "main", {".gitattributes": self._store_blob(GITATTRIBUTES, lfs=False)}, "initial commit", ""
            )
            self.repos[(repo_type, repo_id)] = repo
            return repo

    # ---- tree views ------------------------------------------------------------------------------------------
    @staticmethod
    def _dirs(files: dict[str, _FileEntry]) -> set[str]:
        return {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}

    def _tree_entry(self, commit: _Commit, path: str) -> dict[str, Any]:
        entry = commit.files.get(path)
        if entry is None:  # a directory: its oid only needs to change when its content does
            inside = sorted(f"{p}:{e.git_oid}" for p, e in commit.files.items() if p.startswith(path + "/"))
            oid = hashlib.sha1("\n".join(inside).encode()).hexdigest()
            return {"type": "directory", "oid": oid, "size": 0, "path": path}
        info: dict[str, Any] = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": path}
        if entry.lfs:
            info["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": len(entry.pointer())}
        return info

    def _sibling(self, path: str, entry: _FileEntry) -> dict[str, Any]:
        info: dict[str, Any] = {"rfilename": path, "size": entry.size, "blobId": entry.git_oid}
        if entry.lfs:
            info["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": len(entry.pointer())}
        return info


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer  # set on the per-server subclass
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every response carries Content-Length

    # ---- plumbing --------------------------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # silence stderr; requests are in hub.requests
        pass

    def _iter_body(self) -> Iterator[bytes]:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return
                yield self.rfile.read(size)
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                chunk = self.rfile.read(min(CHUNK, remaining))
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk

    def _body(self) -> bytes:
        if getattr(self, "_cached_body", None) is None:
            self._cached_body = b"".join(self._iter_body())
        return self._cached_body

    def _json_body(self) -> Any:
        body = self._body()
        return json.loads(body) if body else {}

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self._status = status

    def _send_json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _dispatch(self) -> None:
        self._cached_body = None
        self._status = 0
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        segments = url.path.strip("/").split("/")  # still %-encoded: revisions like refs%2Fpr%2F1 stay one segment
        unhandled = False
        try:
            for method, pattern, name in _ROUTES:
                if method == self.command and (match := pattern.fullmatch(url.path)):
                    getattr(self, name)(**{k: unquote(v) for k, v in match.groupdict().items() if v is not None})
                    break
            else:
                if not self._resolve_route(segments):
                    unhandled = True
                    raise HubError(404, f"No local-hub route for {self.command} {url.path}")
        except HubError as err:
            headers = {k: str(v) for k, v in err.headers.items()}
            if err.code:
                headers["X-Error-Code"] = err.code
            headers["X-Error-Message"] = err.message
            self._send_json({"error": err.message, **err.body}, err.status, headers)
        except Exception as err:  # noqa: BLE001 - report server bugs to the client instead of dropping the socket
            self._send_json({"error": f"local hub bug: {err!r}"}, 500)
            self.close_connection = True
        finally:
            # An unread request body would desync the keep-alive connection: drop the connection instead.
            if self._cached_body is None and self.command not in ("GET", "HEAD"):
                self.close_connection = True
            with self.hub.lock:
                self.hub.requests.append(
                    {"method": self.command, "path": self.path, "status": self._status, "unhandled": unhandled}
                )

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # ---- account / repos -------------------------------------------------------------------------------------
    def whoami(self) -> None:
        self._send_json(
            {
                "type": "user",
                "id": "0" * 24,
                "name": USER,
                "fullname": "Local Test User",
                "email": f"{USER}@localhost",
                "emailVerified": True,
                "isPro": False,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}},
            }
        )

    def create_repo(self) -> None:
        payload = self._json_body()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        private = payload.get("private") or payload.get("visibility") == "private"
        repo = self.hub.create_repo(repo_id, repo_type, bool(private))
        url = self.hub.repo_url(repo_type, repo.repo_id)
        self._send_json({"url": url, "name": repo.repo_id, "id": repo.repo_id})

    def delete_repo(self) -> None:
        payload = self._json_body()
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        with self.hub.lock:
            if self.hub.repos.pop((payload.get("type") or "model", repo_id), None) is None:
                raise HubError(404, f"Repository Not Found: {repo_id}", "RepoNotFound")
        self._send_json({})

    def validate_yaml(self) -> None:
        self._body()
        self._send_json({"errors": [], "warnings": []})

    def repo_info(self, type: str, repo: str, rev: str = "main") -> None:
        with self.hub.lock:
            info = self.hub._repo(type, repo)
            commit = self.hub._commit(type, repo, rev)
            siblings = [self.hub._sibling(p, e) for p, e in sorted(commit.files.items())]
        out = {
            "_id": hashlib.sha1(f"{type}/{repo}".encode()).hexdigest()[:24],
            "id": repo,
            "author": repo.split("/")[0],
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": info.created_at,
            "private": info.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(s["size"] for s in siblings),
        }
        if type == "model":
            out["modelId"] = repo
        self._send_json(out)

    def list_refs(self, type: str, repo: str) -> None:
        with self.hub.lock:
            refs = dict(self.hub._repo(type, repo).refs)

        def ref(name: str, full: str) -> dict[str, str]:
            return {"name": name, "ref": full, "targetCommit": refs[name]}

        branches = [ref(n, f"refs/heads/{n}") for n in refs if not n.startswith("refs/")]
        prs = [ref(n, n) for n in refs if n.startswith("refs/pr/")]
        self._send_json({"branches": branches, "converts": [], "tags": [], "pullRequests": prs})

    def list_commits(self, type: str, repo: str, rev: str) -> None:
        with self.hub.lock:
            info = self.hub._repo(type, repo)
            commit: _Commit | None = self.hub._commit(type, repo, rev)
            history = []
            while commit is not None:
                history.append(commit)
                commit = info.commits.get(commit.parent) if commit.parent else None
        self._send_json(
            [
                {"id": c.sha, "title": c.title, "message": c.message, "date": c.date, "authors": [{"user": USER}]}
                for c in history
            ]
        )

    def create_branch(self, type: str, repo: str, branch: str) -> None:
        start = self._json_body().get("startingPoint") or "main"
        with self.hub.lock:
            info = self.hub._repo(type, repo)
            if branch in info.refs:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            info.refs[branch] = self.hub._commit(type, repo, start).sha
        self._send_json({})

    # ---- tree ------------------------------------------------------------------------------------------------
    def tree(self, type: str, repo: str, rev: str, path: str = "") -> None:
        recursive = self.query.get("recursive", "false").lower() in ("1", "true")
        path = path.strip("/")
        with self.hub.lock:
            commit = self.hub._commit(type, repo, rev)
            dirs = self.hub._dirs(commit.files)
            if path and path not in dirs:
                raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound", {"X-Repo-Commit": commit.sha})
            prefix = f"{path}/" if path else ""
            paths = [p for p in itertools.chain(dirs, commit.files) if p.startswith(prefix)]
            if not recursive:
                paths = [p for p in paths if "/" not in p[len(prefix) :]]
            # Directories first, like the Hub; the client does not depend on the order.
            entries = [self.hub._tree_entry(commit, p) for p in sorted(paths, key=lambda p: (p not in dirs, p))]
        self._send_json(entries)  # a single page: no Link header, so the client stops paginating

    def paths_info(self, type: str, repo: str, rev: str) -> None:
        form = parse_qs(self._body().decode())
        with self.hub.lock:
            commit = self.hub._commit(type, repo, rev)
            dirs = self.hub._dirs(commit.files)
            wanted = [p.strip("/") for p in form.get("paths", [])]
            entries = [self.hub._tree_entry(commit, p) for p in wanted if p in commit.files or p in dirs]
        self._send_json(entries)

    # ---- upload: preupload, LFS batch + PUT, commit ----------------------------------------------------------
    def preupload(self, type: str, repo: str, rev: str) -> None:
        files = self._json_body().get("files", [])
        with self.hub.lock:
            info = self.hub._repo(type, repo)
            commit = info.resolve(rev)  # a branch that does not exist yet is created by the commit
        out = []
        for f in files:
            lfs = f["size"] >= LFS_THRESHOLD or f["path"].lower().endswith(LFS_SUFFIXES)
            existing = commit.files.get(f["path"]) if commit else None
            # "oid" lets the client skip unchanged files: sha256 for LFS, git blob sha1 for regular files.
            oid = None if existing is None else existing.etag
            out.append(
                {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        self._send_json({"files": out, "commitOid": commit.sha if commit else None})

    def lfs_batch(self, repo: str, prefix: str | None = None) -> None:
        payload = self._json_body()
        repo_type = {"datasets": "dataset", "spaces": "space"}.get((prefix or "").strip("/"), "model")
        with self.hub.lock:
            self.hub._repo(repo_type, repo)
        if payload.get("operation") != "upload":
            raise HubError(400, "local hub only supports LFS uploads")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            out: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not self.hub._blob_path(oid).exists():  # no "actions" tells the client the object is already stored
                out["actions"] = {
                    "upload": {"href": f"{self.hub.endpoint}/lfs-storage/{oid}", "header": {}},
                    "verify": {"href": f"{self.hub.endpoint}/lfs-verify", "header": {}},
                }
            objects.append(out)
        self._send_json(
            {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
            headers={"Content-Type": "application/vnd.git-lfs+json"},
        )

    def lfs_put(self, oid: str) -> None:
        digest = hashlib.sha256()
        tmp = self.hub.blob_dir / f"{oid}.upload{next(self.hub._counter)}"
        with open(tmp, "wb") as fh:  # streamed to disk: LFS objects can be large
            for chunk in self._iter_body():
                digest.update(chunk)
                fh.write(chunk)
        self._cached_body = b""
        if digest.hexdigest() != oid:
            tmp.unlink()
            raise HubError(400, f"sha256 mismatch: expected {oid}, got {digest.hexdigest()}")
        tmp.replace(self.hub._blob_path(oid))
        self._send(200, headers={"ETag": f'"{oid}"'})

    def lfs_verify(self) -> None:
        obj = self._json_body()
        path = self.hub._blob_path(obj["oid"])
        if not path.exists() or path.stat().st_size != int(obj["size"]):
            raise HubError(404, f"LFS object {obj['oid']} not found or wrong size")
        self._send_json({"success": True})

    def commit(self, type: str, repo: str, rev: str) -> None:
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        create_pr = self.query.get("create_pr") in ("1", "true", "True")
        with self.hub.lock:
            info = self.hub._repo(type, repo)
            base = info.resolve(rev)
            if base is None and (create_pr or re.fullmatch(r"[0-9a-f]{40}", rev)):
                raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            files = dict(base.files) if base else {}
            header = {}
            for item in lines:
                key, value = item["key"], item["value"]
                if key == "header":
                    header = value
                elif key == "file":
                    data = (
                        base64.b64decode(value["content"])
                        if value.get("encoding") == "base64"
                        else value["content"].encode()
                    )
                    files[value["path"]] = self.hub._store_blob(data, lfs=False)
                elif key == "lfsFile":
                    if not self.hub._blob_path(value["oid"]).exists():
                        raise HubError(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                    size = self.hub._blob_path(value["oid"]).stat().st_size
                    if "size" in value and int(value["size"]) != size:
                        raise HubError(422, f"LFS object {value['oid']} has {size} bytes, not {value['size']}")
                    files[value["path"]] = self.hub._entry(value["oid"], size, lfs=True)
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
                elif key == "deletedFolder":
                    folder = value["path"].rstrip("/") + "/"
                    files = {p: e for p, e in files.items() if not p.startswith(folder)}
                else:
                    raise HubError(400, f"unknown commit operation {key!r}")
            parent = header.get("parentCommit")
            if parent and base is not None and parent != base.sha:
                raise HubError(412, f"A commit has happened since. Please refresh and try again (head is {base.sha})")
            ref = rev
            if create_pr:
                info.num_prs += 1
                ref = f"refs/pr/{info.num_prs}"
                info.refs[ref] = base.sha
            elif base is not None and rev == base.sha:
                raise HubError(400, "Cannot commit on top of a detached commit sha; use a branch")
            new = self.hub._add_commit(info, ref, files, header.get("summary", ""), header.get("description", ""))
        url = self.hub.repo_url(type, repo)
        out = {"success": True, "commitOid": new.sha, "commitUrl": f"{url}/commit/{new.sha}", "hookOutput": ""}
        out["pullRequestUrl"] = f"{url}/discussions/{info.num_prs}" if create_pr else None
        self._send_json(out)

    # ---- download --------------------------------------------------------------------------------------------
    def _resolve_route(self, segments: list[str]) -> bool:
        """`HEAD|GET /{datasets/|spaces/}{repo_id}/resolve/{revision}/{path}`; True if the URL had that shape."""
        if self.command not in ("GET", "HEAD"):
            return False
        repo_type = "model"
        if segments[0] in ("datasets", "spaces") and len(segments) > 4 and "resolve" in segments[2:4]:
            repo_type, segments = segments[0][:-1], segments[1:]
        if "resolve" not in segments[1:3]:
            return False
        idx = segments.index("resolve", 1)
        if len(segments) < idx + 3:
            return False
        repo_id = "/".join(unquote(s) for s in segments[:idx])
        revision = unquote(segments[idx + 1])
        path = unquote("/".join(segments[idx + 2 :]))
        self.resolve(repo_type, repo_id, revision, path)
        return True

    def resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        with self.hub.lock:
            commit = self.hub._commit(repo_type, repo_id, revision)
            entry = commit.files.get(path)
        if entry is None:
            # X-Repo-Commit on the 404 lets the client cache the file's absence for this commit (.no_exist).
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{entry.etag}"',
            "Accept-Ranges": "bytes",
        }
        if entry.lfs:
            # The Hub answers LFS files with a redirect carrying these; served directly here, the client reads them
            # the same way (X-Linked-* take precedence over ETag / Content-Length).
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        start, end, status = 0, entry.size - 1, 200
        if (rng := re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())) and entry.size:
            first, last = rng.groups()
            if first:
                start, end = int(first), min(int(last), entry.size - 1) if last else entry.size - 1
            elif last:
                start = max(entry.size - int(last), 0)
            if start >= entry.size:
                raise HubError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{entry.size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        length = max(end - start + 1, 0)
        headers["Content-Length"] = str(length)
        self._send(status, headers=headers)
        if self.command == "GET":
            with open(self.hub._blob_path(entry.sha256), "rb") as fh:
                fh.seek(start)
                remaining = length
                while remaining > 0 and (chunk := fh.read(min(CHUNK, remaining))):
                    self.wfile.write(chunk)
                    remaining -= len(chunk)


_TYPE = r"(?P<type>model|dataset|space)s"
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES = [
    (method, re.compile(pattern), name)
    for method, pattern, name in [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("DELETE", r"/api/repos/delete", "delete_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", rf"/api/{_TYPE}/{_REPO}", "repo_info"),
        ("GET", rf"/api/{_TYPE}/{_REPO}/revision/(?P<rev>[^/]+)", "repo_info"),
        ("GET", rf"/api/{_TYPE}/{_REPO}/refs", "list_refs"),
        ("GET", rf"/api/{_TYPE}/{_REPO}/commits/(?P<rev>[^/]+)", "list_commits"),
        ("POST", rf"/api/{_TYPE}/{_REPO}/branch/(?P<branch>[^/]+)", "create_branch"),
        ("GET", rf"/api/{_TYPE}/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
        ("POST", rf"/api/{_TYPE}/{_REPO}/paths-info/(?P<rev>[^/]+)", "paths_info"),
        ("POST", rf"/api/{_TYPE}/{_REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", rf"/api/{_TYPE}/{_REPO}/commit/(?P<rev>[^/]+)", "commit"),
        ("POST", r"/(?P<prefix>datasets/|spaces/)?(?P<repo>[^/]+/[^/]+?)\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", r"/lfs-storage/(?P<oid>[0-9a-f]{64})", "lfs_put"),
        ("POST", r"/lfs-verify", "lfs_verify"),
    ]
]


@contextlib.contextmanager
def local_hub(root: str | os.PathLike | None = None) -> Iterator[HubServer]:
    """Run a `HubServer` for the duration of the block; yields it (`.endpoint`, `.env(tmp_path)`, `.requests`)."""
    with HubServer(root) as server:
        yield server
