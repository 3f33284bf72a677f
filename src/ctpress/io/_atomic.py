"""Atomic output: write into a temporary path beside the target, then rename it into place."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import InputError


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces ``path`` atomically.

    The temporary path lies in the target's directory (so the final rename never crosses
    file systems) and does not exist yet: the caller creates it as a file or a directory.
    If the body raises, the temporary output is removed and ``path`` is left untouched.
    An existing directory (or a file replaced by a directory) is first renamed aside,
    then deleted once the new output is in place.

    Parameters
    ----------
    path : str or PathLike
        Final location of the output file or directory.

    Yields
    ------
    Path
        Temporary path to write the complete output to.
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise InputError(f"cannot write {target}: directory {target.parent} does not exist")
    token = f"{os.getpid()}.{secrets.token_hex(4)}"
    tmp = target.parent / f".{target.name}.{token}.tmp"
    try:
        yield tmp
        if target.exists() and (target.is_dir() or tmp.is_dir()):
            old = target.parent / f".{target.name}.{token}.old"
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            _remove(old)
        else:
            os.replace(tmp, target)
    finally:
        _remove(tmp)
