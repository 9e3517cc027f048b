"""The committed slice embeddings are what the model computes from the slice's texts (``-m slow``)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SLICE_EMBEDDINGS


@pytest.mark.slow
def test_committed_slice_embeddings_match_the_model(scifact_slice, tmp_path) -> None:
    from vespa_quant.embed.embedded import load_embedded

    stored = np.load(SLICE_EMBEDDINGS)
    fresh = load_embedded(scifact_slice, str(stored["model"]), cache_dir=tmp_path, show_progress=False)
    np.testing.assert_allclose(fresh.doc_vectors, stored["doc_vectors"], atol=2e-5)
    np.testing.assert_allclose(fresh.query_vectors, stored["query_vectors"], atol=2e-5)
