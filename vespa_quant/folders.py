"""Folders written as a set, and locks so two runs never interleave in one folder (STYLE 17).

A results folder (``evaluate``, ``drift``, ``analyze``) is one set of files that belong together:
a reader must never see results.json of one run beside pareto.png of another, and a run that
fails half-way (a plot that raises, an interrupt) must leave the previous set as it was. So
:func:`write_folder` writes every file into a fresh sibling ``.NAME.staging-<pid>``, then swaps
it in with two renames on the same file system::

    NAME -> NAME.previous        (kept until the new set is in place)
    .NAME.staging-<pid> -> NAME
    rm -r NAME.previous

The output folder is replaced *as a whole*: files a previous run left there that this run does
not write are gone afterwards. That is the simple rule that makes "one folder = one run" true; the
price is that ``--output`` must be a folder of its own. To make the rule safe, an existing folder
is replaced only when it holds nothing but results (:data:`RESULT_FILES`, or the marker file a
set written here carries): ``--output ~`` or a folder holding calibrations is refused, never
emptied. A crash between the two renames leaves ``NAME.previous`` and no ``NAME``; the next run
on that folder puts it back before anything else.

Locks are a sibling file ``.NAME.lock`` created with ``O_EXCL`` and holding the owner's pid and
host, so the second of two runs on one folder fails at once with one line naming the first; a
lock whose process is gone (same host, pid not alive) is stale and taken over. The lock is
re-entrant within a process, so the CLI can hold it from before any compute to after the write
while the writer takes it again. Feeds and recalibrations lock their ``--calibration-dir`` the
same way.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vespa_quant.errors import VespaQuantError

MARKER = ".vespa-quant-results"
"""Written into every results set: proof that the folder may be replaced by the next run."""
RESULT_FILES = frozenset({
    "results.json", "results.csv", "per_query.csv", "pareto.png", "table.txt",
    "drift.json", "drift.csv", "drift_steps.csv", "policy.csv", "policy_steps.csv", "drift.png",
    "analysis.json", "analysis.csv", "analysis.png", "report.md", MARKER,
})
"""Every file a results writer of this package writes: folders holding only these are results."""

_HELD: dict[Path, int] = {}
"""Locks this process holds (lock file -> nesting depth): re-entrant acquisition."""


def check_output_dir(path: Path, what: str = "--output") -> Path:
    """Fail before any compute when ``path`` cannot become a folder we write into."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise VespaQuantError(f"{what} {path}: exists and is not a folder")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise VespaQuantError(f"{what} {path}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise VespaQuantError(f"{what} {path}: {probe} is not writable")
    return path


def check_results_dir(path: Path, what: str = "--output") -> Path:
    """:func:`check_output_dir`, and that an existing folder may be replaced as a results set: checked before compute."""
    path = check_output_dir(path, what)
    check_replaceable(path.absolute(), what)
    return path


def lock_path(folder: Path) -> Path:
    folder = Path(folder).absolute()
    return folder.with_name(f".{folder.name}.lock")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _owner(lock: Path) -> dict:
    try:
        owner = json.loads(lock.read_text())
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


@contextmanager
def folder_lock(folder: Path, what: str = "--output") -> Iterator[Path]:
    """Hold ``.NAME.lock`` beside ``folder`` for the duration; re-entrant within this process.

    Raises :class:`VespaQuantError` naming the holder's pid when another live process holds it.
    """
    lock = lock_path(folder)
    if _HELD.get(lock):
        _HELD[lock] += 1
        try:
            yield lock
        finally:
            _HELD[lock] -= 1
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                         "command": " ".join(sys.argv[:3])})
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _owner(lock)
            pid, host = owner.get("pid"), owner.get("host")
            stale = isinstance(pid, int) and host == socket.gethostname() and not _pid_alive(pid)
            if stale or not owner and time.time() - lock.stat().st_mtime > 60:
                lock.unlink(missing_ok=True)  # its process is gone (or it never got its record)
                continue
            since = time.strftime("%H:%M:%S", time.localtime(owner.get("since", 0)))
            raise VespaQuantError(
                f"{what} {folder} is in use by pid {pid} on {host} since {since} ({owner.get('command', '?')}); "
                f"wait for it to finish, or delete {lock} if that process is gone"
            ) from None
        with os.fdopen(handle, "w") as file:
            file.write(record)
        break
    else:
        raise VespaQuantError(f"{what} {folder}: could not take the lock {lock}")
    _HELD[lock] = 1
    try:
        yield lock
    finally:
        del _HELD[lock]
        lock.unlink(missing_ok=True)


def _previous(folder: Path) -> Path:
    return folder.with_name(folder.name + ".previous")


def recover(folder: Path) -> None:
    """Finish or undo a swap a crash interrupted (call with the lock held)."""
    previous = _previous(folder)
    if previous.is_dir() and not folder.exists():
        os.rename(previous, folder)
    elif previous.is_dir():
        shutil.rmtree(previous)


def check_replaceable(folder: Path, what: str = "--output") -> None:
    """Refuse to replace a folder that holds anything a results writer did not write."""
    if not folder.is_dir() or (folder / MARKER).is_file():
        return
    foreign = sorted(entry.name for entry in folder.iterdir() if entry.name not in RESULT_FILES or entry.is_dir())
    if foreign:
        shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise VespaQuantError(
            f"{what} {folder}: holds {shown}, which no results writer wrote; a results folder is replaced as a "
            f"whole, so choose a new or empty folder"
        )


def write_folder(folder: Path, write: Callable[[Path], list[Path]], what: str = "--output") -> list[Path]:
    """Run ``write(staging)`` into an empty staging folder, then make it ``folder``, as a set.

    ``write`` returns the paths it wrote inside ``staging``; the result names them inside
    ``folder``. On any exception (or interrupt) the staging folder is removed and ``folder`` is
    untouched.
    """
    folder = check_output_dir(Path(folder), what).absolute()
    with folder_lock(folder, what):
        recover(folder)
        check_replaceable(folder, what)
        staging = folder.with_name(f".{folder.name}.staging-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            written = [Path(path) for path in write(staging)]
            (staging / MARKER).write_text(json.dumps({"written": time.time(), "pid": os.getpid(),
                                                      "files": sorted(p.name for p in written)}) + "\n")
            if folder.exists():
                os.rename(folder, _previous(folder))
            os.rename(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            recover(folder)  # a failed second rename: the previous set goes back
            raise
        recover(folder)
    return [folder / path.relative_to(staging) for path in written]
