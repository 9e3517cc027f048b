"""Ctrl-C and SIGTERM during ``feed`` and ``recalibrate``: the CLI runs in a subprocess against the fake
Vespa (whose writes are slowed down), receives the signal mid-way, stops within seconds, prints one
summary line, exits 130, leaves no traceback and the manifest as it was."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_vespa import FakeVespa, serving
from fault_vespa import FaultPlan
from typer.testing import CliRunner

from vespa_quant.cli import app

pytestmark = pytest.mark.integration  # signals sent to the CLI in subprocesses: ~10 s; CI runs it (`pytest -m integration`)

ROOT = Path(__file__).resolve().parents[1]
SLOW_WRITES = FaultPlan(stall=1.0, stall_seconds=0.1, paths=("/document/v1/vespaquant/doc/docid/",))
"""Every put and update waits 0.1 s: a slice feed at concurrency 2 would take over ten seconds."""


def _wait_for(condition, seconds: float) -> None:
    until = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > until:
            raise AssertionError("the subprocess never got going")
        time.sleep(0.05)


def _interrupt(fake: FakeVespa, args: list, sig: signal.Signals, counter) -> tuple[int, str, float, int]:
    """Run ``vespa-quant ARGS``, send ``sig`` once a few writes arrived; (exit code, stderr, seconds to exit,
    writes that arrived after the signal)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VESPA_QUANT_DEBUG": ""}
    process = subprocess.Popen([sys.executable, "-m", "vespa_quant", *map(str, args)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        start = counter()
        _wait_for(lambda: counter() - start >= 6 or process.poll() is not None, 60)
        process.send_signal(sig)
        sent_at, at_signal = time.monotonic(), counter()
        _, stderr = process.communicate(timeout=30)
        elapsed = time.monotonic() - sent_at
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stderr, elapsed, counter() - at_signal


@pytest.fixture
def fed(scifact_slice: Path, slice_cache: Path, tmp_path: Path):
    common = ["--dataset", scifact_slice, "--cache-dir", slice_cache, "--methods", "int8_asym", "--dims", "384"]
    with serving() as fake:
        result = CliRunner().invoke(app, ["feed", *map(str, common), "--endpoint", fake.url,
                                          "--calibration-dir", str(tmp_path / "cal")])
        assert result.exit_code == 0, result.output
        fake.faults = SLOW_WRITES
        yield fake, common, tmp_path / "cal"


def _check(code: int, stderr: str, elapsed: float, late_writes: int, expected: str) -> None:
    assert code == 130, stderr
    assert "Traceback" not in stderr and "Exception in thread" not in stderr, stderr
    summary = [line for line in stderr.splitlines() if line.startswith("interrupted: ")]
    assert len(summary) == 1 and expected in summary[0], stderr
    assert elapsed < 8, elapsed
    assert late_writes <= 4, late_writes  # only the requests in flight at the signal (concurrency 2, and retries none)


def test_sigint_stops_a_feed_and_keeps_the_manifest(fed) -> None:
    fake, common, calibration_dir = fed
    before = (calibration_dir / "manifest.json").read_bytes()
    args = ["feed", *common, "--rotation", "qr", "--seed", "3", "--endpoint", fake.url, "--calibration-dir",
            calibration_dir, "--concurrency", "2"]
    code, stderr, elapsed, late = _interrupt(fake, args, signal.SIGINT, lambda: fake.puts)
    _check(code, stderr, elapsed, late, f"feed to {fake.url}: ")
    assert "acknowledged" in stderr and "unsent" in stderr and "manifest.json unchanged" in stderr
    assert (calibration_dir / "manifest.json").read_bytes() == before
    assert (calibration_dir / "feed-status.json").is_file()


def test_sigterm_stops_a_recalibration_and_keeps_the_active_slot(fed) -> None:
    fake, common, calibration_dir = fed
    before = (calibration_dir / "manifest.json").read_bytes()
    args = ["recalibrate", *common[:4], "--method", "int8_asym", "--dim", "384", "--endpoint", fake.url,
            "--calibration-dir", calibration_dir, "--concurrency", "2"]
    code, stderr, elapsed, late = _interrupt(fake, args, signal.SIGTERM, lambda: len(fake.updates))
    _check(code, stderr, elapsed, late, "recalibration of int8_asym@384 slot b: ")
    assert "queries stay on slot a, manifest unchanged" in stderr
    assert (calibration_dir / "manifest.json").read_bytes() == before
