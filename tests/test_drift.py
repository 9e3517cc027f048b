"""Drift metrics, recalibration policy and the drift runner, on generated data with a known shift.

The shift is the one the issue names: the second half of a stream of unit vectors moves by +1
sigma in half the dimensions. Every drift metric of every calibrated method must see it (be
larger than on the same stream without the shift), calibration-free methods must report exact
zeros, and the policy must fire on the shifted stream and not on the stationary one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import unit_rows

from vespa_quant.data.beir import BeirDataset
from vespa_quant.drift import (
    RecalibrationPolicy,
    drift_metrics,
    format_drift_table,
    run_drift,
    simulate_policy,
    write_drift,
)
from vespa_quant.drift.metrics import OCCUPANCY_EDGE, OCCUPANCY_JS, jensen_shannon
from vespa_quant.drift.stats import crossed_bootstrap
from vespa_quant.embed.embedded import EmbeddedDataset
from vespa_quant.errors import CalibrationError, VespaQuantError
from vespa_quant.evaluate.metrics import paired_bootstrap
from vespa_quant.quantize.base import calibrate
from vespa_quant.quantize.registry import METHODS
from vespa_quant.quantize.rotation import rotation_matrix

CALIBRATED = [m for m in METHODS.values() if m.needs_calibration]
FREE = [m for m in METHODS.values() if not m.needs_calibration]
METRICS = ("centre_shift_sigma", "centre_shift_sigma_max", "scale_ratio", "occupancy_divergence",
           "code_change_fraction")
N, DIM = 2000, 64


@pytest.fixture(scope="module")
def streams() -> tuple[np.ndarray, np.ndarray]:
    """(stationary, shifted): the same 2000 unit vectors; in ``shifted`` rows 1000: are +1 sigma
    in dims :32 (sigma measured on the first half, shift added after normalising, so it is exact)."""
    stationary = unit_rows(np.random.default_rng(0).standard_normal((N, DIM)))
    shifted = stationary.copy()
    shifted[N // 2:, : DIM // 2] += stationary[: N // 2, : DIM // 2].std(axis=0)
    return stationary, shifted


@pytest.mark.parametrize("method", CALIBRATED, ids=lambda m: m.name)
def test_every_drift_metric_detects_a_mean_shift(method, streams) -> None:
    stationary, shifted = streams
    calibration = calibrate(method, stationary[:500])
    calm = drift_metrics(method, calibration, stationary)
    moved = drift_metrics(method, calibration, shifted)
    assert not calm.calibration_free and calm.n_seen == N
    for name in METRICS:
        before, after = getattr(calm, name), getattr(moved, name)
        assert after > before, f"{method.name}: {name} {after} not above stationary {before}"
    expected = OCCUPANCY_EDGE if method.name == "int8_asym" else OCCUPANCY_JS
    assert moved.occupancy_measure == expected
    assert moved.centre_shift_sigma > 0.2  # half the dims moved by 1 sigma: ~0.25 on average


@pytest.mark.parametrize("method", FREE, ids=lambda m: m.name)
def test_calibration_free_methods_have_exactly_zero_drift(method, streams) -> None:
    _, shifted = streams
    metrics = drift_metrics(method, calibrate(method, shifted[:100]), shifted)
    assert metrics.calibration_free
    assert all(getattr(metrics, name) == 0.0 for name in METRICS)
    assert not RecalibrationPolicy().fires(metrics)


def test_metrics_of_a_calibration_on_its_own_documents_are_zero(streams) -> None:
    stationary, _ = streams
    for method in CALIBRATED:
        metrics = drift_metrics(method, calibrate(method, stationary[:300]), stationary[:300])
        assert metrics.centre_shift_sigma == 0.0 and metrics.code_change_fraction == 0.0


def test_drift_is_measured_in_the_rotated_space(streams) -> None:
    stationary, shifted = streams
    matrix = rotation_matrix("qr", DIM, 3).astype(np.float32)
    for method in CALIBRATED:
        rotated = drift_metrics(method, calibrate(method, stationary[:500], "qr", 3), shifted)
        by_hand = drift_metrics(method, calibrate(method, stationary[:500] @ matrix.T), shifted @ matrix.T)
        for name in METRICS:
            a, b = getattr(rotated, name), getattr(by_hand, name)
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-3, abs=1e-4), (method.name, name)


def test_drift_metrics_reject_mismatched_inputs(streams) -> None:
    stationary, _ = streams
    lloyd = METHODS["lloyd_max_gauss"]
    with pytest.raises(CalibrationError, match="expects 64"):
        drift_metrics(lloyd, calibrate(lloyd, stationary), stationary[:, :32])
    with pytest.raises(CalibrationError, match="not binary_median_asym"):
        drift_metrics(METHODS["binary_median_asym"], calibrate(lloyd, stationary), stationary)


def test_jensen_shannon_bounds() -> None:
    design = np.array([0.25, 0.25, 0.25, 0.25])
    assert jensen_shannon(design[None], design)[0] == pytest.approx(0.0, abs=1e-12)
    assert jensen_shannon(np.array([[1.0, 0.0]]), np.array([0.0, 1.0]))[0] == pytest.approx(1.0)


@pytest.mark.parametrize("method", CALIBRATED, ids=lambda m: m.name)
def test_policy_fires_on_the_shifted_stream_only(method, streams) -> None:
    stationary, shifted = streams
    checkpoints = list(range(400, N + 1, 200))
    runs = {}
    for name, stream in (("stationary", stationary), ("shifted", shifted)):
        initial = calibrate(method, stream[:200])
        runs[name] = simulate_policy(method, RecalibrationPolicy(), initial, stream[:200], stream, checkpoints)
    assert runs["stationary"].recalibrations == 0
    shifted_run = runs["shifted"]
    assert shifted_run.recalibrations >= 1
    first = next(step for step in shifted_run.steps if step.fired)
    assert first.n_seen > N // 2  # not before the shifted documents arrive
    assert shifted_run.reencoded_docs == sum(step.n_seen for step in shifted_run.steps if step.fired)
    assert shifted_run.final.id != shifted_run.initial.id


def test_crossed_bootstrap_with_one_draw_is_the_paired_bootstrap() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.random(50), rng.random(50)
    one = crossed_bootstrap((a - b)[None], n_resamples=300, seed=4)
    assert one == paired_bootstrap(a - b, np.zeros(50), n_resamples=300, seed=4)
    two = crossed_bootstrap(np.stack([a - b, a - b + 0.01]), n_resamples=300, seed=4)
    assert two.ci_low < two.delta_mean < two.ci_high


# ----------------------------------------------------------------------------- runner


def synthetic_embedded(shift: float, *, name: str = "synthetic", model: str = "synthetic-model",
                       seed: int = 0, n_docs: int = 800, dim: int = 32, n_queries: int = 150) -> EmbeddedDataset:
    """A BEIR-like set whose second half of documents (in file order) moved in half the dims.

    Vectors are re-normalised after the shift, like real embeddings; each query is a noisy copy of
    one second-half document, so the moved documents are what retrieval has to tell apart.
    """
    rng = np.random.default_rng(seed)
    docs = rng.standard_normal((n_docs, dim))
    docs[n_docs // 2:, : dim // 2] += shift
    targets = rng.choice(np.arange(n_docs // 2, n_docs), n_queries, replace=False)
    queries = docs[targets] + rng.standard_normal((n_queries, dim))
    doc_ids = [f"d{i}" for i in range(n_docs)]
    query_ids = [f"q{i}" for i in range(n_queries)]
    dataset = BeirDataset(name, Path(name), doc_ids, [""] * n_docs, query_ids, [""] * n_queries,
                          {q: {doc_ids[t]: 1} for q, t in zip(query_ids, targets)}, "0" * 16)
    return EmbeddedDataset(dataset, model, unit_rows(docs), unit_rows(queries))


@pytest.fixture(scope="module")
def shifted_report():
    return run_drift(synthetic_embedded(2.5), list(METHODS.values()), [0.05, 0.25], order="given",
                     steps=6, n_resamples=200)


@pytest.mark.integration  # shares the 5 s shifted run
def test_run_drift_writes_every_file(shifted_report, tmp_path: Path) -> None:
    written = write_drift(shifted_report, tmp_path)
    names = {p.name for p in written}
    assert names == {"drift.json", "drift.csv", "drift_steps.csv", "policy.csv", "policy_steps.csv", "drift.png",
                     "table.txt"}
    assert all(p.stat().st_size > 0 for p in written)
    document = json.loads((tmp_path / "drift.json").read_text())
    assert len(document["fractions"]) == len(METHODS) * 2
    assert len(document["steps"]) == len(METHODS) * 6
    assert {r["method"] for r in document["policy"]} == set(METHODS)
    assert document["conclusion"].startswith("Quantizers losing significant NDCG@10 when calibrated on 5%")
    header = (tmp_path / "drift.csv").read_text().splitlines()[0]
    assert "delta_vs_full_ci_low" in header and "significant" in header


@pytest.mark.integration  # shares the 5 s shifted run
def test_calibration_free_methods_show_zero_drift_in_the_report(shifted_report) -> None:
    free = {m.name for m in FREE}
    for row in shifted_report.step_rows:
        if row["method"] in free:
            assert row["calibration_free"]
            assert all(row[name] == 0.0 for name in METRICS) and row["ndcg_gap"] == 0.0
    for row in shifted_report.fraction_rows:
        if row["method"] in free:
            assert row["delta_vs_full"] == 0.0 and not row["significant"]
    assert "Calibration-free (zero drift by construction): float32, bfloat16" in format_drift_table(shifted_report)


@pytest.mark.integration  # shares the 5 s shifted run
def test_a_fresh_calibration_recovers_what_the_shift_costs(shifted_report) -> None:
    """For the 1- and 2-bit methods the frozen calibration loses NDCG on the moved documents and
    the policy wins it back. Not asserted for 3-bit and finer methods (int8_asym, the 3- and
    4-bit Lloyd-Max): re-normalising after the shift also shrinks the moved documents, so they
    stay inside the calibrated range, and the finer levels keep them apart (its metrics see the exact shift in test_every_drift_metric_detects_a_mean_shift)."""
    coarse_methods = [m for m in CALIBRATED if getattr(m, "bits", 8) <= 2]
    stationary = run_drift(synthetic_embedded(0.0), coarse_methods, [0.05, 0.25], order="given", steps=6,
                           n_resamples=200)
    final = {r["method"]: r for r in shifted_report.step_rows if r["step"] == 6}
    calm = {r["method"]: r for r in stationary.step_rows if r["step"] == 6}
    policy = {r["method"]: r for r in shifted_report.policy_rows}
    calm_policy = {r["method"]: r for r in stationary.policy_rows}
    coarse = [m.name for m in CALIBRATED if getattr(m, "bits", 8) <= 2]
    for name in coarse:
        assert final[name]["ndcg_gap_ci"][0] > 0, name
        assert final[name]["ndcg_gap"] > calm[name]["ndcg_gap"], name
        assert policy[name]["recovered"] > 0, name
        assert policy[name]["recalibrations"] > calm_policy[name]["recalibrations"], name
        for metric in ("centre_shift_sigma", "occupancy_divergence", "code_change_fraction"):
            assert final[name][metric] > calm[name][metric], (name, metric)
    losers = {r["method"] for r in shifted_report.significant_losses()}
    assert set(coarse) <= losers


def test_cross_domain_calibration() -> None:
    served = synthetic_embedded(2.5)
    other = synthetic_embedded(0.0, name="other", seed=5, n_docs=800)
    report = run_drift(served, [METHODS["lloyd_max_gauss"], METHODS["binary_asym"]], [0.5, 1.0],
                       calibrate_on=other, steps=4, n_resamples=100)
    assert report.settings["calibrate_on"] == "other" and report.settings["initial_fraction"] == 1.0
    rows = {(r["method"], r["calibration_fraction"]): r for r in report.fraction_rows}
    assert rows[("lloyd_max_gauss", 1.0)]["n_calibration_docs"] == 800
    assert rows[("lloyd_max_gauss", 1.0)]["calibration_dataset"] == "other"
    assert rows[("lloyd_max_gauss", 1.0)]["delta_vs_full"] < 0  # the other corpus never moved
    assert len([r for r in report.policy_step_rows if r["method"] == "lloyd_max_gauss"]) == 4
    with pytest.raises(CalibrationError, match="model and dim must match"):
        run_drift(served, CALIBRATED[:1], [0.5], calibrate_on=synthetic_embedded(0.0, model="another-model"))


def test_repeats_average_calibration_draws() -> None:
    served = synthetic_embedded(0.0, n_docs=400, n_queries=40)
    report = run_drift(served, [METHODS["quaternary_asym"]], [0.1], repeats=3, steps=2, n_resamples=100)
    (row,) = report.fraction_rows
    assert row["repeats"] == 3 and len(row["ndcg_at_10_per_repeat"]) == 3
    assert row["ndcg_at_10"] == pytest.approx(np.mean(row["ndcg_at_10_per_repeat"]))
    with pytest.raises(VespaQuantError, match="order='random'"):
        run_drift(served, [METHODS["quaternary_asym"]], [0.1], order="given", repeats=2)
    with pytest.raises(VespaQuantError, match=r"expected values in \(0, 1\]"):
        run_drift(served, [METHODS["quaternary_asym"]], [0.0])


@pytest.mark.integration  # shares the 5 s shifted run
def test_a_failing_plot_leaves_the_previous_drift_results(shifted_report, tmp_path: Path, monkeypatch) -> None:
    import vespa_quant.drift.plot as plot

    out = tmp_path / "drift"
    write_drift(shifted_report, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("no display")

    monkeypatch.setattr(plot, "drift_plot", broken)
    with pytest.raises(RuntimeError, match="no display"):
        write_drift(shifted_report, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drift"]
