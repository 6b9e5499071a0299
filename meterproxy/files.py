"""Files private to the user: folders 0700, files 0600, whatever they were created with.

The home holds the ledger (call content, even redacted), the CA's private key and config
secrets: no other local user may read any of it, also when the home already existed with
looser modes or a tool created a file with the default umask.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no cross-process lock; run one sender per home there.
    fcntl = None  # type: ignore[assignment]

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed and make it 0700."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    make_private(path)
    return path


def make_private(path: Path) -> None:
    """Chmod one file to 0600 or one folder to 0700 if it is ours and looser (missing: nothing)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode) or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
        return
    wanted = DIR_MODE if stat.S_ISDIR(info.st_mode) else FILE_MODE
    if stat.S_IMODE(info.st_mode) & ~wanted:
        path.chmod(stat.S_IMODE(info.st_mode) & wanted)


def make_tree_private(root: Path, depth: int = 2) -> None:
    """:func:`make_private` for ``root`` and what lies up to ``depth`` levels under it (the home's
    layout is two deep: ``logs/2026-11-22.jsonl``); symlinks are not followed."""
    make_private(root)
    if depth <= 0 or root.is_symlink() or not root.is_dir():
        return
    for child in root.iterdir():
        make_tree_private(child, depth - 1)


@contextmanager
def locked(path: Path, wait: bool = False) -> Iterator[bool]:
    """Hold an exclusive lock on the file ``path`` (created 0600; released by the OS even on SIGKILL).

    Yields False at once when another process holds it and ``wait`` is False.
    """
    if fcntl is None:
        yield True
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
