"""Every bad input of issue 8 through the CLI: exit code, one line naming the input, nothing earlier lost.

Runs on the SciFact slice (committed embeddings, no model). Earlier results and an earlier
manifest are set up once per module and copied into each test, which then checks they are
byte-identical afterwards. The Vespa side is the fake on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fake_vespa import FakeVespa, free_port, serving
from fault_vespa import silent_server
from typer.testing import CliRunner

from vespa_quant.cli import app

SLICE_METHODS = "int8_asym"


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def invoke(args: list) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def one_error_line(output: str) -> str:
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


@pytest.fixture(scope="module")
def common(scifact_slice: Path, slice_cache: Path) -> list:
    return ["--dataset", scifact_slice, "--cache-dir", slice_cache]


@pytest.fixture(scope="module")
def vespa(common: list, tmp_path_factory) -> Iterator[tuple[FakeVespa, Path]]:
    """A fake Vespa fed with the slice, and the calibration folder of that feed."""
    calibration_dir = tmp_path_factory.mktemp("fed") / "cal"
    with serving() as fake:
        code, output = invoke(["feed", *common, "--methods", SLICE_METHODS, "--dims", "384", "--endpoint", fake.url,
                               "--calibration-dir", calibration_dir])
        assert code == 0, output
        yield fake, calibration_dir


@pytest.fixture(scope="module")
def previous_results(common: list, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("previous") / "out"
    code, output = invoke(["evaluate", *common, "--methods", "binary_asym", "--dims", "384", "--resamples", "20",
                           "--output", out])
    assert code == 0, output
    return out


@pytest.fixture
def workspace(previous_results: Path, vespa: tuple[FakeVespa, Path], tmp_path: Path) -> Path:
    """tmp_path with ``out/`` (earlier results) and ``cal/`` (the manifest of the fed slice)."""
    shutil.copytree(previous_results, tmp_path / "out")
    shutil.copytree(vespa[1], tmp_path / "cal")
    return tmp_path


def _bad_ids(tmp: Path) -> list:
    vectors = np.full((3, 384), 384 ** -0.5, dtype=np.float32)
    np.save(tmp / "docs.npy", vectors)
    (tmp / "docs.ids").write_bytes(b"d1\nd\xff2\nd3\n")
    np.save(tmp / "queries.npy", vectors)
    (tmp / "queries.ids").write_text("q1\nq2\nq3\n")
    return ["--doc-embeddings", tmp / "docs.npy", "--query-embeddings", tmp / "queries.npy"]


def _calibration_file(kind: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / f"{kind}.npz"
        if kind == "empty":
            path.write_bytes(b"")
        elif kind == "truncated":
            source = next((tmp / "cal").glob("int8_asym_384_*.npz")).read_bytes()
            path.write_bytes(source[: len(source) // 2])
        elif kind == "text":
            path.write_text("not a calibration\n")
        elif kind == "foreign":
            np.savez(path, weights=np.zeros(3))
        return path
    return make


EVALUATE = ["evaluate", "--methods", "binary_asym", "--dims", "384", "--resamples", "20"]
CASES = {
    # name: (args after the command's common options, expected exit code, what the message must say)
    "methods-comma": (lambda t: [*EVALUATE, "--methods", ",", "--output", t / "out"], 2, "--methods ',' names no method"),
    "dims-repeated": (lambda t: [*EVALUATE, "--dims", "384,384", "--output", t / "out"], 2, "repeats a value"),
    "dims-too-big": (lambda t: [*EVALUATE, "--dims", "512", "--output", t / "out"], 2, r"\[512\] not in \[8, 384\]"),
    "hits-0": (lambda t: [*EVALUATE, "--hits", "0", "--output", t / "out"], 2, "--hits"),
    "k1-0": (lambda t: [*EVALUATE, "--k1", "0", "--output", t / "out"], 2, "--k1"),
    "seed-negative": (lambda t: [*EVALUATE, "--seed", "-1", "--output", t / "out"], 2, "--seed"),
    "drift-dim-0": (lambda t: ["drift", "--dim", "0", "--output", t / "out"], 2, "--dim"),
    "drift-repeats-0": (lambda t: ["drift", "--repeats", "0", "--output", t / "out"], 2, "--repeats"),
    "drift-fraction": (lambda t: ["drift", "--calibration-fraction", "0,2", "--output", t / "out"], 2,
                       r"calibration fractions \[0\.0, 2\.0\]: expected values in \(0, 1\]"),
    "output-is-a-file": (lambda t: [*EVALUATE, "--output", t / "out" / "results.json"], 2, "exists and is not a folder"),
    "output-under-a-file": (lambda t: ["analyze", "--output", t / "out" / "results.json" / "sub"], 2, "is not a folder"),
    "output-not-results": (lambda t: ["drift", "--output", t], 2, "which no results writer wrote"),
    "ids-not-utf8": (lambda t: [*EVALUATE, *_bad_ids(t), "--output", t / "out"], 2,
                     "docs.ids line 2: not valid UTF-8"),
    "ids-missing": (lambda t: [*EVALUATE, "--doc-embeddings", t / "none.npy", "--query-embeddings", t / "none.npy",
                               "--output", t / "out"], 2, "none.npy is not a file"),
    "vespa-not-listening": (lambda t: [*EVALUATE, "--backend", "vespa", "--endpoint", f"http://127.0.0.1:{free_port()}",
                                       "--calibration-dir", t / "cal", "--output", t / "out"], 2, "nothing listens on"),
    "vespa-no-manifest": (lambda t: [*EVALUATE, "--backend", "vespa", "--calibration-dir", t / "nothing",
                                     "--output", t / "out"], 2, "no manifest; run `vespa-quant feed` first"),
    "feed-calibration-dir-is-a-file": (lambda t: ["feed", "--calibration-dir", t / "cal" / "manifest.json"], 2,
                                       "--calibration-dir .* exists and is not a folder"),
    "feed-keep-without-manifest": (lambda t: ["feed", "--keep-calibrations", "--calibration-dir", t / "empty"], 2,
                                   "no manifest"),
    "recalibrate-free-method": (lambda t: ["recalibrate", "--method", "float32", "--dim", "384",
                                           "--calibration-dir", t / "cal"], 2, "float32 needs no calibration"),
    "recalibrate-unknown-dim": (lambda t: ["recalibrate", "--method", "int8_asym", "--dim", "256",
                                           "--calibration-dir", t / "cal"], 2, "has no calibration for int8_asym@256"),
    **{f"calibration-{kind}": (lambda t, kind=kind: ["recalibrate", "--method", "int8_asym", "--dim", "384",
                                                     "--calibration", _calibration_file(kind)(t),
                                                     "--calibration-dir", t / "cal"], 2, f"{kind}.npz")
       for kind in ("empty", "truncated", "text", "foreign")},
}


NEEDS_VECTORS = {"dims-too-big", "ids-not-utf8"}
"""Cases only the vectors can decide (their width, their ids file): every other one must fail before."""


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_loses_nothing(name: str, common: list, workspace: Path,
                                                 vespa: tuple[FakeVespa, Path], monkeypatch) -> None:
    build, expected_code, message = CASES[name]
    args = build(workspace)
    if name not in NEEDS_VECTORS:
        import vespa_quant.embed.cache as cache

        def embedded_too_early(*args, **kwargs):
            raise AssertionError(f"{name}: vectors were loaded before the input was checked")

        monkeypatch.setattr(cache, "embed_dataset", embedded_too_early)
    if args[0] in ("feed", "recalibrate"):
        args += ["--endpoint", vespa[0].url]
    before = digest(workspace / "out"), digest(workspace / "cal")
    code, output = invoke([args[0], *common, *args[1:]])
    assert code == expected_code, output
    if "Usage:" in output:  # typer's own check of a bound (min=...): its usage error, naming the option
        assert message in output and "Traceback" not in output
    else:
        import re

        assert re.search(message, one_error_line(output)), output
    assert (digest(workspace / "out"), digest(workspace / "cal")) == before


def test_evaluate_refuses_the_manifest_of_another_dataset(common: list, workspace: Path,
                                                          vespa: tuple[FakeVespa, Path]) -> None:
    manifest = json.loads((workspace / "cal" / "manifest.json").read_text())
    manifest["dataset_fingerprint"] = "0123456789abcdef"
    (workspace / "cal" / "manifest.json").write_text(json.dumps(manifest))
    before = digest(workspace / "out")
    code, output = invoke(["evaluate", *common, "--methods", SLICE_METHODS, "--dims", "384", "--backend", "vespa",
                           "--endpoint", vespa[0].url, "--calibration-dir", workspace / "cal",
                           "--output", workspace / "out"])
    assert code == 2
    assert "describes documents fed with dataset_fingerprint '0123456789abcdef'" in one_error_line(output)
    assert digest(workspace / "out") == before


def test_search_answers_of_the_wrong_shape_and_a_failing_plot_keep_earlier_results(
        common: list, workspace: Path, vespa: tuple[FakeVespa, Path], monkeypatch) -> None:
    fake = vespa[0]
    before = digest(workspace / "out")
    args = ["evaluate", *common, "--methods", SLICE_METHODS, "--dims", "384", "--backend", "vespa", "--endpoint",
            fake.url, "--calibration-dir", workspace / "cal", "--resamples", "20", "--output", workspace / "out"]
    fake.search_answer = (200, {"hits": []})
    try:
        code, output = invoke(args)
    finally:
        fake.search_answer = None
    assert code == 2 and f'{fake.url}/search/ answered {{"hits": []}}, expected {{"root"' in one_error_line(output)
    assert digest(workspace / "out") == before

    import vespa_quant.evaluate.plot as plot

    def broken(*args, **kwargs):
        raise RuntimeError("matplotlib fell over")

    monkeypatch.setattr(plot, "pareto_plot", broken)
    code, output = invoke(args)
    assert code == 3 and "RuntimeError: matplotlib fell over (this is a bug" in one_error_line(output)
    assert digest(workspace / "out") == before
    assert sorted(p.name for p in workspace.iterdir()) == ["cal", "out"]  # no staging folder, no lock left


def test_a_feed_the_schema_rejects_leaves_the_manifest(common: list, workspace: Path,
                                                       vespa: tuple[FakeVespa, Path]) -> None:
    before = digest(workspace / "cal")
    code, output = invoke(["feed", *common, "--methods", SLICE_METHODS, "--dims", "128", "--endpoint", vespa[0].url,
                           "--calibration-dir", workspace / "cal"])
    line = one_error_line(output)
    assert code == 2 and "failed" in line and "manifest.json unchanged, plan kept in manifest.pending.json" in line
    assert "first error: HTTP 400: No field 'int8_asym_128_" in line
    after = digest(workspace / "cal")
    assert after["manifest.json"] == before["manifest.json"]
    status = json.loads((workspace / "cal" / "feed-status.json").read_text())
    assert not status["committed"] and len(status["failed"]) == len(status["skipped"]) + len(status["failed"])


def test_feed_against_a_server_that_never_answers_exits_within_its_timeout(common: list, workspace: Path) -> None:
    before = digest(workspace / "cal")
    with silent_server() as url:
        started = time.monotonic()
        code, output = invoke(["feed", *common, "--methods", SLICE_METHODS, "--dims", "384", "--endpoint", url,
                               "--calibration-dir", workspace / "cal", "--timeout", "1"])
        elapsed = time.monotonic() - started
    assert code == 2 and elapsed < 3, (elapsed, output)
    assert f"Vespa at {url} is not ready within 1 s (--timeout): {url}/state/v1/health" in one_error_line(output)
    assert digest(workspace / "cal") == before


def test_a_second_run_on_the_same_output_fails_naming_the_first(common: list, workspace: Path) -> None:
    from vespa_quant.folders import lock_path

    before = digest(workspace / "out")
    lock_path(workspace / "out").write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename,
                                                        "since": time.time(), "command": "vespa-quant drift"}))
    code, output = invoke(["evaluate", *common, *EVALUATE[1:], "--output", workspace / "out"])
    assert code == 2 and f"is in use by pid {os.getppid()}" in one_error_line(output)
    assert digest(workspace / "out") == before


def test_evaluate_replaces_the_folder_as_a_set(common: list, workspace: Path) -> None:
    (workspace / "out" / "pareto.png").unlink()  # a partial set from an older version
    code, output = invoke(["evaluate", *common, "--methods", "int8_asym", "--dims", "384", "--resamples", "20",
                           "--output", workspace / "out"])
    assert code == 0, output
    names = sorted(p.name for p in (workspace / "out").iterdir())
    assert names == sorted([".vespa-quant-results", "pareto.png", "per_query.csv", "results.csv", "results.json",
                            "table.txt"])
    rows = json.loads((workspace / "out" / "results.json").read_text())
    assert [row["method"] for row in rows] == ["int8_asym"]  # binary_asym of the earlier run is gone with it
    assert (workspace / "out" / "table.txt").read_text().strip() in output


def test_dataset_notes_are_printed_one_line_each(tmp_path: Path) -> None:
    data = tmp_path / "tiny"
    (data / "qrels").mkdir(parents=True)
    (data / "corpus.jsonl").write_text("".join(f'{{"_id": "d{i}", "text": "t{i}"}}\n' for i in range(3)))
    (data / "queries.jsonl").write_text("".join(f'{{"_id": "q{i}", "text": "t{i}"}}\n' for i in range(3)))
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t1\nq1\td9\t1\n")
    rng = np.random.default_rng(0)
    for name, prefix in (("docs", "d"), ("queries", "q")):
        vectors = rng.standard_normal((3, 384)).astype(np.float32)
        np.save(data / f"{name}.npy", vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
        (data / f"{name}.ids").write_text("".join(f"{prefix}{i}\n" for i in range(3)))
    code, output = invoke(["evaluate", "--dataset", data, "--methods", "float32", "--dims", "384", "--resamples", "10",
                           "--doc-embeddings", data / "docs.npy", "--query-embeddings", data / "queries.npy",
                           "--output", tmp_path / "out"])
    assert code == 0, output
    notes = [line for line in output.splitlines() if line.startswith("note: ")]
    assert len(notes) == 2 and "1 of 3 queries have no judgement" in notes[0] and "'d9'" in notes[1]


def test_deploy_to_a_refused_port_fails_in_seconds(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    code, output = invoke(["deploy", "--config-url", closed, "--endpoint", closed, "--out", tmp_path / "package",
                           "--app-dir", tmp_path / "app", "--timeout", "3"])
    assert code == 2 and time.monotonic() - started < 3
    assert f"config server {closed}: not listening; start Vespa with `vespa-quant up`" in one_error_line(output)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: no unwritable folder to test with")
def test_an_unwritable_output_is_refused_before_compute(common: list, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, output = invoke(["evaluate", *common, *EVALUATE[1:], "--output", locked / "out"])
    assert code == 2 and "is not writable" in one_error_line(output)
