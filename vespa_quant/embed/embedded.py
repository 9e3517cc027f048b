"""A dataset together with its embeddings: what every downstream stage (engine, Vespa feed,
evaluation, drift) starts from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vespa_quant.data.beir import BeirDataset, load_beir
from vespa_quant.embed.cache import embed_dataset, truncate_matryoshka
from vespa_quant.errors import VespaQuantError


@dataclass(frozen=True)
class EmbeddedDataset:
    """A dataset with its document and query embeddings at the model's native dim."""

    dataset: BeirDataset
    model: str
    doc_vectors: np.ndarray
    query_vectors: np.ndarray

    @property
    def native_dim(self) -> int:
        return self.doc_vectors.shape[1]

    def at_dim(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(docs, queries) truncated Matryoshka-style to ``dim`` and re-normalised."""
        if dim > self.native_dim or dim < 8:
            raise VespaQuantError(f"dim {dim} not in [8, {self.native_dim}] for model {self.model}")
        if dim == self.native_dim:
            return self.doc_vectors, self.query_vectors
        return truncate_matryoshka(self.doc_vectors, dim), truncate_matryoshka(self.query_vectors, dim)


def load_embedded(dataset: str | Path, model: str, *, split: str = "test",
                  data_root: str | Path | None = None, cache_dir: str | Path | None = None,
                  precomputed: Mapping[str, tuple[str | Path, str | Path]] | None = None,
                  show_progress: bool = True) -> EmbeddedDataset:
    loaded = load_beir(dataset, split=split, data_root=data_root)
    docs, queries = embed_dataset(loaded, model, cache_dir=cache_dir, precomputed=precomputed,
                                  show_progress=show_progress)
    return EmbeddedDataset(loaded, model, docs, queries)
