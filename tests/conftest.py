"""Shared fixtures: tiny generated embeddings shaped like real ones, and the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="session")
def generated() -> tuple[np.ndarray, np.ndarray]:
    """(docs, queries): 600 x 64 unit vectors with skewed, offset dims and two dead dims.

    Queries are noisy copies of documents, so retrieval has a right answer; the dead dims are
    ~1e-33 everywhere like all-MiniLM-L6-v2's, to prove calibration stays finite.
    """
    rng = np.random.default_rng(7)
    scale = np.linspace(2.0, 0.3, 64)
    docs = rng.standard_normal((600, 64)) * scale + rng.normal(0, 0.3, 64)
    docs[:, :8] = np.abs(docs[:, :8]) ** 1.5
    queries = docs[:40] + 0.5 * rng.standard_normal((40, 64)) * scale
    docs, queries = unit_rows(docs), unit_rows(queries)
    docs[:, [10, 20]] = 1e-33
    queries[:, [10, 20]] = 1e-33
    return docs, queries


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    folder = Path(os.environ.get("VESPA_QUANT_DATA", SHARED_DATASETS)) / "scifact"
    if not (folder / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not found at {folder}: put ../shared/datasets beside the repo or set VESPA_QUANT_DATA")
    return folder
