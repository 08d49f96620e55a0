"""Files written so that a kill never leaves one half written under its name: the content goes to `NAME.tmp` beside
it, is flushed to disk, and is renamed over `NAME` (`os.replace`), so readers see the old file or the new one.

Every command that writes results uses these: the run records and results of training, `beats-hf evaluate`'s results
and report, `beats-hf pack-shards`' manifest.
"""

import json
import os
from collections.abc import Callable
from typing import IO, Any


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = False) -> None:
    """`write(handle)` into `path`'s temporary file, then the rename."""
    path = os.fspath(path)
    temporary = f"{path}.tmp"
    with open(temporary, "wb" if binary else "w") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def atomic_write_json(path: str | os.PathLike, payload: Any, sort_keys: bool = False) -> None:
    atomic_write(path, lambda handle: json.dump(payload, handle, indent=2, sort_keys=sort_keys))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text))


__all__ = ["atomic_write", "atomic_write_json", "atomic_write_text"]
