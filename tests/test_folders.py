"""Results folders are written as a set, and a lock keeps two runs on one folder apart."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from vespa_quant.errors import VespaQuantError
from vespa_quant.folders import MARKER, check_results_dir, folder_lock, lock_path, write_folder


def _writer(files: dict[str, str], fail_after: int | None = None):
    def write(staging: Path) -> list[Path]:
        written = []
        for i, (name, text) in enumerate(files.items()):
            if fail_after is not None and i == fail_after:
                raise RuntimeError("the plot failed")
            (staging / name).write_text(text)
            written.append(staging / name)
        return written
    return write


def _contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir()) if p.name != MARKER}


def test_a_folder_is_replaced_as_a_whole_and_a_failure_leaves_the_previous_set(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = write_folder(out, _writer({"results.json": "1", "pareto.png": "old plot"}))
    assert first == [out / "results.json", out / "pareto.png"] and (out / MARKER).is_file()
    write_folder(out, _writer({"results.json": "2"}))
    assert _contents(out) == {"results.json": "2"}  # pareto.png of the first run is gone with it
    with pytest.raises(RuntimeError, match="the plot failed"):
        write_folder(out, _writer({"results.json": "3", "pareto.png": "new"}, fail_after=1))
    assert _contents(out) == {"results.json": "2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging, no .previous, no lock left


def test_an_interrupted_swap_is_undone_by_the_next_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_folder(out, _writer({"results.json": "1"}))
    os.rename(out, tmp_path / "out.previous")  # a crash between the two renames
    with pytest.raises(RuntimeError):
        write_folder(out, _writer({"results.json": "2"}, fail_after=0))
    assert _contents(out) == {"results.json": "1"} and not (tmp_path / "out.previous").exists()


@pytest.mark.parametrize("setup, message", [
    (lambda p: p.write_text("x"), "exists and is not a folder"),
    (lambda p: (p.mkdir(), (p / "notes.txt").write_text("mine")), "holds notes.txt, which no results writer wrote"),
    (lambda p: (p.mkdir(), (p / "calibrations").mkdir()), "holds calibrations, which no results writer wrote"),
])
def test_folders_that_are_not_results_are_refused_untouched(tmp_path: Path, setup, message: str) -> None:
    out = tmp_path / "out"
    setup(out)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    for check in (lambda: check_results_dir(out), lambda: write_folder(out, _writer({"results.json": "1"}))):
        with pytest.raises(VespaQuantError, match=message):
            check()
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_results_of_earlier_versions_may_be_replaced(tmp_path: Path) -> None:
    out = tmp_path / "results"
    out.mkdir()
    (out / "results.json").write_text("[]")
    (out / "table.txt").write_text("old")
    write_folder(out, _writer({"results.json": "[1]"}))
    assert _contents(out) == {"results.json": "[1]"}


def test_a_second_run_on_a_locked_folder_fails_naming_the_first(tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = subprocess.Popen(["sleep", "30"])
    try:
        lock_path(out).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename, "since": 0,
                                              "command": "vespa-quant evaluate"}))
        with pytest.raises(VespaQuantError, match=rf"--output {out} is in use by pid {holder.pid} on .* "
                                                  r"\(vespa-quant evaluate\); wait for it to finish"):
            write_folder(out, _writer({"results.json": "1"}))
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    write_folder(out, _writer({"results.json": "1"}))  # its process is gone: the stale lock is taken over
    assert _contents(out) == {"results.json": "1"} and not lock_path(out).exists()


def test_the_lock_is_reentrant_within_a_process(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with folder_lock(out):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
        write_folder(out, _writer({"results.json": "1"}))
        assert lock_path(out).exists()
    assert not lock_path(out).exists()
