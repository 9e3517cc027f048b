"""Issue 8's acceptance on full SciFact (slow): under 20% injected 429/500 and 5% dropped connections,
``feed`` stores every one of the 5,183 documents exactly once with the right codes and calibration id
and exits 0. The timing against a clean feed is measured by ``benchmarks/feed_under_faults.py``
(benchmarks print ratios; tests do not time)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fake_vespa import FakeVespa, serving
from fault_vespa import FaultPlan

from vespa_quant.embed.embedded import EmbeddedDataset
from vespa_quant.quantize.base import Calibration, encode
from vespa_quant.quantize.registry import METHODS
from vespa_quant.vespa.manifest import read_manifest
from vespa_quant.vespa.naming import calibration_field_name, field_name
from vespa_quant.vespa.wire import decode_tensor_hex, vespa_document_id


def assert_every_document_once(fake: FakeVespa, embedded: EmbeddedDataset, calibration_dir: Path, dim: int) -> None:
    """One stored document per corpus id and no other, each with the manifest's calibration ids and codes."""
    doc_ids = embedded.dataset.doc_ids
    assert len(fake.docs) == len(doc_ids) and set(fake.docs) == {vespa_document_id(d) for d in doc_ids}
    docs, _ = embedded.at_dim(dim)
    for entry in read_manifest(calibration_dir)["calibrations"]:
        method, slot = METHODS[entry["method"]], entry["active_slot"]
        calibration = Calibration.load(calibration_dir / entry["slots"][slot]["file"])
        codes = encode(method, docs, calibration)
        for spec in method.fields(dim):
            name = field_name(method.name, dim, spec.role, slot)
            stored = np.stack([decode_tensor_hex(fake.docs[vespa_document_id(d)][name]["values"], spec.cell_type)
                               for d in doc_ids])
            np.testing.assert_array_equal(stored, codes[spec.role])
        if method.needs_calibration:
            name = calibration_field_name(method.name, dim, slot)
            assert {fake.docs[vespa_document_id(d)][name] for d in doc_ids} == {calibration.id}
    assert all(fake.docs[vespa_document_id(d)]["doc_id"] == d for d in doc_ids)


@pytest.mark.slow
def test_scifact_feed_under_429_500_and_dropped_connections(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from vespa_quant.cli import app
    from vespa_quant.embed.embedded import load_embedded

    scifact = Path("/work/shared/datasets/scifact")
    if not (scifact / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not found at {scifact}")
    embedded = load_embedded(scifact, "all-MiniLM-L6-v2", show_progress=False)  # cached: never embeds
    plan = FaultPlan(seed=0, statuses={429: 0.10, 500: 0.10}, drop=0.05)
    with serving(plan) as fake:
        result = CliRunner().invoke(app, ["feed", "--dataset", str(scifact), "--methods", "binary_asym,int8_asym",
                                          "--dims", "384", "--endpoint", fake.url,
                                          "--calibration-dir", str(tmp_path / "cal")])
        assert result.exit_code == 0, result.output
        assert_every_document_once(fake, embedded, tmp_path / "cal", 384)
    assert plan.injected[429] > 500 and plan.injected[500] > 500 and plan.injected["drop"] > 150
