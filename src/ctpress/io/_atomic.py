"""Outputs: the rule for replacing what exists, and atomic writes.

The rule (every command and API function that writes follows it, through :func:`check_output`):

* an output is never the input (the same file, a hard link or symlink to it, or a directory
  holding it), whatever ``overwrite`` says;
* an existing output is replaced only with ``overwrite=True`` (``--force`` on the command
  line); a symlink is then written through: the file it points to is replaced;
* a directory is replaced only if ctpress wrote it: every directory output carries the marker
  file :data:`MARKER`.  A directory without it is never removed.

Files are written under a temporary name beside the target and renamed into place, so the
final name never holds a partial output.  Temporary names carry the writer's host and process
id (:func:`temp_name`); a temporary output whose writer is provably gone (same host, no such
process) is removed the next time ctpress writes into that directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .._version import __version__
from ..errors import InputError

#: File that ctpress writes into every directory it creates as an output.
MARKER = ".ctpress-output"
_TEMP_NAME = re.compile(
    r"^\..+\.ctpress-(?P<host>[0-9a-f]{8})-(?P<pid>[1-9][0-9]{0,9})-[0-9a-f]{8}\.tmp$"
)

PathLike = str | os.PathLike[str]


class OutputExistsError(InputError):
    """The output exists and ``overwrite`` was not given (the CLI words it as ``--force``)."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} exists; pass overwrite=True to replace it")
        self.path = path


def _host_tag() -> str:
    """Short hash of this host (and PID namespace, where there is one): process ids in
    temporary names are only comparable between writers with the same tag."""
    identity = socket.gethostname()
    with contextlib.suppress(OSError):
        identity += os.readlink("/proc/self/ns/pid")
    return hashlib.sha256(identity.encode()).hexdigest()[:8]


_HOST = _host_tag()


def temp_name(name: str, pid: int | None = None) -> str:
    """Name of a temporary output for the final name ``name``, written by process ``pid``
    (default: this one): ``.NAME.ctpress-<host hash>-<pid>-<random hex>.tmp``."""
    return f".{name[:100]}.ctpress-{_HOST}-{pid or os.getpid()}-{secrets.token_hex(4)}.tmp"


def _writer_alive(pid: int) -> bool:
    """False only if process ``pid`` provably does not exist."""
    if os.name != "posix":  # os.kill would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: it exists (another user's)
        return True
    return True


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove the temporary outputs in ``directory`` left by dead ctpress writers of this host.

    Only names of exactly :func:`temp_name`'s pattern are considered, and only those whose
    writer's host tag is this host's and whose process no longer exists: a concurrent
    writer's temporary output (another process, or another host sharing the folder) is kept.

    Returns
    -------
    list of Path
        The removed paths.
    """
    try:
        names = [entry.name for entry in os.scandir(directory)]
    except OSError:
        return []
    removed = []
    for name in names:
        match = _TEMP_NAME.match(name)
        if match and match["host"] == _HOST and not _writer_alive(int(match["pid"])):
            _remove(directory / name)
            removed.append(directory / name)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _mark(directory: Path) -> None:
    (directory / MARKER).write_text(
        f"Written by ctpress {__version__}. ctpress replaces this directory only when asked "
        "to (--force, overwrite=True); delete this file to protect it.\n"
    )


def _not_ours(path: Path) -> InputError:
    return InputError(
        f"{path} is a directory that ctpress did not write (it holds no {MARKER} file); "
        "ctpress never replaces it: remove it yourself or choose another output name"
    )


def _is_ours(directory: Path) -> bool:
    return (directory / MARKER).is_file()


def check_output(
    path: PathLike, *, overwrite: bool = False, inputs: Iterable[PathLike | bytes] = ()
) -> Path:
    """Apply the output rule (see the module docstring) to ``path``, before any work.

    Parameters
    ----------
    path : str or PathLike
        Output file or directory.
    overwrite : bool
        Whether an existing output may be replaced.
    inputs : iterable of paths
        Paths the command reads (bytes items, in-memory inputs, are skipped).

    Returns
    -------
    Path
        Where to write: ``path`` with symlinks resolved.

    Raises
    ------
    InputError
        ``path`` is (or holds) an input, is a directory ctpress did not write, or its
        directory does not exist.
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    target = Path(path)
    real = Path(os.path.realpath(target))
    if not real.parent.is_dir():
        raise InputError(
            f"cannot write {target}: directory {real.parent} does not exist; create it first"
        )
    for source in inputs:
        if isinstance(source, bytes):
            continue
        source_real = Path(os.path.realpath(source))
        if (
            source_real == real
            or real in source_real.parents
            or (real.exists() and source_real.exists() and os.path.samefile(real, source_real))
        ):
            raise InputError(
                f"output {target} would replace the input {source}; choose another output name"
            )
    if real.is_dir() and not _is_ours(real):
        raise _not_ours(target)
    if os.path.lexists(target) and not overwrite:
        raise OutputExistsError(target)
    return real


def _place_new(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``, failing if ``target`` appeared meanwhile."""
    if os.path.lexists(target):
        raise OutputExistsError(target)
    try:
        if tmp.is_dir():
            os.rename(tmp, target)  # fails on a non-empty directory or a file at target
        else:
            os.link(tmp, target)  # fails if target exists, unlike a rename
    except OSError as exc:
        if os.path.lexists(target):
            raise OutputExistsError(target) from exc
        if tmp.is_dir():
            raise
        os.replace(tmp, target)  # a file system without hard links


def _replace(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing directory (or a file where a directory goes)
    is renamed aside first and deleted once the new output is in place."""
    if not (os.path.lexists(target) and (target.is_dir() or tmp.is_dir())):
        os.replace(tmp, target)
        return
    aside = target.parent / temp_name(target.name)
    os.replace(target, aside)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(aside, target)
        raise
    _remove(aside)


@contextmanager
def atomic_path(
    path: PathLike, *, overwrite: bool = False, inputs: Iterable[PathLike | bytes] = ()
) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it is renamed to ``path``.

    The output rule (:func:`check_output`) is applied on entry and again before the rename
    (the output may have appeared meanwhile).  The temporary path lies in the target's
    directory (the rename never crosses file systems) and does not exist yet: the caller
    creates it as a file or a directory; a directory gets the :data:`MARKER` file.  If the
    body raises, the temporary output is removed and ``path`` is left untouched.  Stale
    temporary outputs of dead writers in that directory are removed on entry.

    Parameters
    ----------
    path : str or PathLike
        Final location of the output file or directory.
    overwrite : bool
        Whether an existing output may be replaced.
    inputs : iterable of paths
        Paths the output must not replace.

    Yields
    ------
    Path
        Temporary path to write the complete output to.
    """
    inputs = list(inputs)
    target = check_output(path, overwrite=overwrite, inputs=inputs)
    remove_stale_temps(target.parent)
    tmp = target.parent / temp_name(target.name)
    try:
        yield tmp
        if tmp.is_dir():
            _mark(tmp)
        check_output(target, overwrite=overwrite, inputs=inputs)
        (_replace if overwrite else _place_new)(tmp, target)
    finally:
        _remove(tmp)


def results_directory(path: PathLike, *, overwrite: bool = False) -> Path:
    """Make ``path`` ready as a directory that ctpress updates in place (bench, demo results).

    A directory ctpress made before (it holds :data:`MARKER`) is reused, keeping files it
    does not rewrite; an empty directory is adopted (marked); a missing one is created with
    its parents.  A non-empty directory ctpress did not write is refused; an existing file
    is replaced only with ``overwrite``.

    Returns
    -------
    Path
        The directory (symlinks resolved where a file was replaced).
    """
    target = Path(path)
    if target.is_dir():
        if not _is_ours(target):
            if any(target.iterdir()):
                raise _not_ours(target)
            _mark(target)
        remove_stale_temps(target)
        return target
    real = target
    if os.path.lexists(target):  # a file, or a symlink to nothing
        real = check_output(target, overwrite=overwrite)
    try:
        real.unlink(missing_ok=True)
        real.mkdir(parents=True)
    except OSError as exc:
        raise InputError(f"cannot create the directory {target}: {exc.strerror}") from exc
    _mark(real)
    return real
