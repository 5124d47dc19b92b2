"""Atomic file writing: a file appears complete under its name, or not at all.

Example:
    >>> import os, tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "out.txt")
    >>> with atomic_path(target) as tmp, open(tmp, "w") as f:
    ...     _ = f.write("done")
    >>> open(target).read()
    'done'
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Writers that decide the format by the whole suffix (Keras) must see it on the temporary name too.
COMPOUND_SUFFIXES = (".weights.h5",)


def writable(path: str | os.PathLike) -> bool:
    """Whether this process may write ``path`` (a file, or a folder to create files in).

    ``os.access`` decides, and a path whose mode grants no write bit to anyone (``chmod a-w``: a read-only
    file, a locked folder) is refused as well: ``os.access`` answers yes to root for every such path.
    """
    return os.access(path, os.W_OK) and bool(os.stat(path).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def check_writable(path: str | os.PathLike) -> None:
    """Raise ``ValueError`` unless ``path`` can be written: its folder exists and is writable, the path is
    not a folder, and an existing file there is writable (by ``writable``: it is never silently replaced)."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise ValueError(f"cannot write {path}: it is a folder, expected a file path")
    if not folder.is_dir():
        raise ValueError(f"cannot write {path}: no such folder {folder}")
    if not writable(folder):
        raise ValueError(f"cannot write {path}: the folder {folder} is not writable")
    if target.exists() and not writable(target):
        raise ValueError(f"cannot write {path}: the file exists and is read-only")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path beside ``path`` (same suffix) that replaces ``path`` only if the block succeeds.

    Refuses (``ValueError``, nothing written) a path that ``check_writable`` refuses.
    """
    check_writable(path)
    target = Path(path)
    suffix = next((s for s in COMPOUND_SUFFIXES if target.name.endswith(s)), target.suffix)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    os.unlink(tmp)  # writers such as Keras refuse to overwrite; let them create it
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
