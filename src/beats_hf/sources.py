"""The one rule that tells a local path from a Hub id, for every model and dataset argument.

A source is LOCAL when it exists on disk, or when it could not be a Hub id: it starts with "/", ".", or "~", holds
more than one "/", or holds a backslash. Anything else ("name" or "namespace/name" that is not on disk) is a Hub id.
So a local folder that does not exist is an error that names it at once, with no network wait; write "./runs/model"
rather than "runs/model" to make a relative two-part path unambiguous.
"""

import os


def is_local_path(source: str | os.PathLike) -> bool:
    source = os.fspath(source)
    return (
        os.path.exists(os.path.expanduser(source))
        or source.startswith(("/", ".", "~"))
        or source.count("/") > 1
        or "\\" in source
    )


def resolve_source(source: str | os.PathLike, what: str = "model") -> str:
    """`source` with `~` expanded when it is local (raising FileNotFoundError, naming it, when it does not exist), or
    unchanged when it is a Hub id."""
    source = os.fspath(source)
    if not is_local_path(source):
        return source
    path = os.path.expanduser(source)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such {what} folder: {source!r} (a local path by its form; see beats_hf.sources).")
    return path
