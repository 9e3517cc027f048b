"""Published quantizers as rows of our own table (issue 11, point 3).

A result of ours means little without the quantizers people already use at the same byte budget,
trained on the same corpus and judged by the same code. This module runs them through exactly
what our methods go through: the same vectors at each dim, exhaustive inner-product search,
:func:`~vespa_quant.evaluate.runner.score_hits` (pytrec_eval), the same per-query alignment, the
same paired bootstrap against float32, plus one against our best row at or under the peer's
bytes/vector, and the Q1 agreement fields of :mod:`~vespa_quant.evaluate.agreement`.

The peers are data (STYLE 2), one spec per configuration, named by it:

* faiss (``index_factory``, ``METRIC_INNER_PRODUCT``): ``PQ{m}x8`` with ``m = d/8, d/4`` (1 and 2
  bits/dim), ``PQ{2m}x4`` at the same two budgets, ``OPQ{m},PQ{m}``, ``SQ4`` and ``SQ8``
  (``IndexScalarQuantizer`` QT_4bit, QT_8bit), and RaBitQ (``IndexRaBitQ``, 1, 2 and 4 bits,
  after a seeded random rotation as the RaBitQ paper and faiss's own tests do; queries at
  faiss's default ``qb = 4`` bits);
* sentence-transformers' ``quantize_embeddings`` with its ``semantic_search_faiss`` rescoring
  recipe: ``ubinary`` codes, Hamming top ``rescore_multiplier * k``, rescored by the float query
  dotted with the unpacked 0/1 bits; ``uint8`` codes (ranges = corpus min/max), inner product of
  the quantized query, rescored by the float query dotted with the dequantized codes. (Its
  ``int8`` precision is served by ``semantic_search_usearch``, which needs usearch.)

Product quantizers are built with faiss's ``np`` suffix: no polysemous training, which only
reorders centroid ids for a Hamming pre-filter that exhaustive ADC search never uses (the scores
are the same) and costs minutes at ``m = 96``. Bytes/vector come from the index
(``sa_code_size``) or the code array, never typed. A peer's scores of given documents (for the
Q1 fields) come from the index's own distance computer; its MSE from ``sa_decode``, except for
RaBitQ, whose estimator is not the inner product with its decoded vector.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from vespa_quant.embed.embedded import EmbeddedDataset
from vespa_quant.engine.local import Hits
from vespa_quant.errors import VespaQuantError
from vespa_quant.evaluate.agreement import Reference, agreement_fields, mse_sample_rows, relative_mse
from vespa_quant.evaluate.metrics import bootstrap_ci, paired_bootstrap
from vespa_quant.evaluate.runner import NDCG, RECALL, score_hits

ST_RESCORE_MULTIPLIER = 4
"""Oversampling of sentence-transformers' rescoring: the value its embedding-quantization examples
pass to ``semantic_search_faiss``/``semantic_search_usearch`` (the function's default is 2)."""
RABITQ_QUERY_BITS = 4
"""Bits of RaBitQ's quantized query: faiss's ``IndexRaBitQ`` default and the RaBitQ paper's B_q."""
PEER_FAMILIES = ("pq", "opq", "sq", "rabitq", "st")
PEER_GROUPS = {"faiss": PEER_FAMILIES, "none": ()}
"""``--peers`` names: a group, or comma-separated families. ``faiss`` is every peer: all of them
run on faiss (sentence-transformers' recipe searches through ``semantic_search_faiss``)."""


class FittedPeer(Protocol):
    """A peer trained and filled with one corpus."""

    @property
    def config(self) -> str: ...

    @property
    def bytes_per_vector(self) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> Hits: ...

    def scores_at(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(nq, k) ranking keys of the documents ``rows[q]``: the peer's score, ``-inf`` where a
        two-phase peer would never return the document."""
        ...

    def reconstruction(self, rows: np.ndarray) -> np.ndarray | None:
        """Reconstruction of the corpus rows ``rows`` (None when the peer has none)."""
        ...


class Peer(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def family(self) -> str: ...

    def fit(self, docs: np.ndarray, seed: int) -> FittedPeer: ...


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise VespaQuantError("--peers faiss needs faiss: pip install faiss-cpu") from None
    return faiss


def _seed(faiss: Any, index: Any, seed: int) -> None:
    """Seed every randomised part of an index before training: k-means and random rotations."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        for position in range(index.chain.size()):
            transform = faiss.downcast_VectorTransform(index.chain.at(position))
            if isinstance(transform, faiss.RandomRotationMatrix):
                transform.init(seed)
        _seed(faiss, index.index, seed)
    elif hasattr(index, "pq"):
        index.pq.cp.seed = seed


@dataclass
class FittedFaiss:
    index: Any
    docs: np.ndarray
    config: str
    reconstructs: bool

    @property
    def bytes_per_vector(self) -> int:
        return int(self.index.sa_code_size())

    def search(self, queries: np.ndarray, k: int) -> Hits:
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.index.ntotal))
        return Hits(rows.astype(np.int64), scores.astype(np.float32))

    def scores_at(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The index's own distance computer on each (query, row): its search score, estimator and all."""
        faiss = _faiss()
        computer = self.index.get_distance_computer()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        out = np.empty(rows.shape, dtype=np.float64)
        for q, query in enumerate(queries):
            computer.set_query(faiss.swig_ptr(query))
            out[q] = [computer(int(row)) for row in rows[q]]
        return out

    def reconstruction(self, rows: np.ndarray) -> np.ndarray | None:
        if not self.reconstructs:
            return None
        sample = np.ascontiguousarray(self.docs[rows], dtype=np.float32)
        return self.index.sa_decode(self.index.sa_encode(sample))


@dataclass(frozen=True)
class FaissPeer:
    """One ``index_factory`` description, inner-product metric, trained and filled with the corpus."""

    name: str
    family: str
    factory: str
    query_bits: int | None = None
    reconstructs: bool = True
    """False when ``sa_decode`` is not what the index scores with (RaBitQ's decode keeps only the
    sign bits and ignores the extra bits and correction factors)."""

    def fit(self, docs: np.ndarray, seed: int) -> FittedFaiss:
        faiss = _faiss()
        docs = np.ascontiguousarray(docs, dtype=np.float32)
        index = faiss.index_factory(docs.shape[1], self.factory, faiss.METRIC_INNER_PRODUCT)
        _seed(faiss, index, seed)
        config = f"faiss {faiss.__version__} index_factory({docs.shape[1]}, {self.factory!r}, METRIC_INNER_PRODUCT)"
        if self.query_bits is not None:
            inner = faiss.downcast_index(faiss.downcast_index(index).index)
            inner.qb = self.query_bits
            config += f", qb={self.query_bits}"
        index.train(docs)
        index.add(docs)
        return FittedFaiss(index, docs, config + f", seed={seed}", self.reconstructs)


def _st_quantization() -> Any:
    try:
        from sentence_transformers.util import quantization
    except ImportError:
        try:
            from sentence_transformers import quantization  # type: ignore[attr-defined,no-redef]  # < 5.0
        except ImportError:
            raise VespaQuantError("--peers st needs sentence-transformers") from None
    return quantization


@dataclass
class FittedSentenceTransformers:
    """Codes of ``quantize_embeddings`` and the ``semantic_search_faiss`` call that searches them."""

    precision: str
    codes: np.ndarray
    ranges: np.ndarray | None
    rescore_multiplier: int
    config: str

    @property
    def bytes_per_vector(self) -> int:
        return int(self.codes.shape[1] * self.codes.itemsize)

    def _search(self, queries: np.ndarray, k: int, rescore: bool) -> Hits:
        quantization = _st_quantization()
        found, _seconds = quantization.semantic_search_faiss(
            np.asarray(queries, dtype=np.float32), corpus_embeddings=self.codes, corpus_precision=self.precision,
            top_k=k, ranges=self.ranges, rescore=rescore, rescore_multiplier=self.rescore_multiplier, exact=True)
        width = max((len(hits) for hits in found), default=0)
        rows = np.full((len(found), width), -1, dtype=np.int64)
        scores = np.full((len(found), width), -np.inf, dtype=np.float32)
        for q, hits in enumerate(found):
            rows[q, :len(hits)] = [hit["corpus_id"] for hit in hits]
            scores[q, :len(hits)] = [hit["score"] for hit in hits]
        return Hits(rows, scores)

    def search(self, queries: np.ndarray, k: int) -> Hits:
        return self._search(queries, k, rescore=True)

    def rescoring_vectors(self, rows: np.ndarray) -> np.ndarray:
        """What the recipe dots the float query with: unpacked 0/1 bits, or dequantized codes
        (``start + code * step``, the buckets ``quantize_embeddings`` cut)."""
        codes = self.codes[rows]
        if self.precision == "ubinary":
            return np.unpackbits(codes, axis=-1)[..., :self.dim].astype(np.float64)
        assert self.ranges is not None
        start = self.ranges[0].astype(np.float32)
        step = (self.ranges[1].astype(np.float32) - start) / 255
        step = np.where(step == 0, 1, step)
        return codes.astype(np.float64) * step + start

    @property
    def dim(self) -> int:
        assert self.ranges is not None or self.precision == "ubinary"
        return int(self.ranges.shape[1]) if self.ranges is not None else int(self.codes.shape[1] * 8)

    def scores_at(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Rescored score of the documents among the first phase's ``rescore_multiplier * k``
        candidates (the library's own first phase: the same call with ``rescore=False``)."""
        depth = rows.shape[1]
        candidates = self._search(queries, depth * self.rescore_multiplier, rescore=False).indices
        scores = np.einsum("qd,qkd->qk", np.asarray(queries, dtype=np.float64), self.rescoring_vectors(rows))
        kept = (rows[:, :, None] == candidates[:, None, :]).any(axis=2)
        return np.where(kept, scores, -np.inf)

    def reconstruction(self, rows: np.ndarray) -> np.ndarray:
        return self.rescoring_vectors(rows)


@dataclass(frozen=True)
class SentenceTransformersPeer:
    name: str
    precision: str
    rescore_multiplier: int = ST_RESCORE_MULTIPLIER
    family: str = "st"

    def fit(self, docs: np.ndarray, seed: int) -> FittedSentenceTransformers:
        import sentence_transformers

        quantization = _st_quantization()
        docs = np.asarray(docs, dtype=np.float32)
        ranges = None if self.precision == "ubinary" else np.vstack([docs.min(axis=0), docs.max(axis=0)])
        codes = quantization.quantize_embeddings(docs, precision=self.precision, ranges=ranges)
        config = (f"sentence-transformers {sentence_transformers.__version__} quantize_embeddings(precision="
                  f"{self.precision!r}{', ranges=corpus min/max' if ranges is not None else ''}) + "
                  f"semantic_search_faiss(corpus_precision={self.precision!r}, rescore=True, "
                  f"rescore_multiplier={self.rescore_multiplier}, exact=True)")
        return FittedSentenceTransformers(self.precision, np.asarray(codes), ranges, self.rescore_multiplier, config)


def parse_peers(spec: str | None) -> tuple[str, ...]:
    """``--peers``: None/``none`` -> no peers; ``faiss`` -> every family; else comma-separated families."""
    if spec is None:
        return ()
    names = [name.strip() for name in spec.split(",") if name.strip()]
    families: list[str] = []
    for name in names:
        if name in PEER_GROUPS:
            families.extend(PEER_GROUPS[name])
        elif name in PEER_FAMILIES:
            families.append(name)
        else:
            raise VespaQuantError(f"--peers {spec!r}: unknown peer {name!r}; expected "
                                  f"{', '.join([*PEER_GROUPS, *PEER_FAMILIES])}")
    return tuple(dict.fromkeys(families))


def peer_configs(dim: int, families: Sequence[str] = PEER_FAMILIES) -> list[Peer]:
    """Every peer of ``families`` that fits ``dim`` (a product quantizer needs ``m`` to divide it)."""
    peers: list[Peer] = []
    budgets = [dim // 8, dim // 4] if dim % 8 == 0 else []
    for m in budgets:
        if "pq" in families:
            peers.append(FaissPeer(f"faiss_pq{m}x8", "pq", f"PQ{m}x8np"))
            if dim % (2 * m) == 0:
                peers.append(FaissPeer(f"faiss_pq{2 * m}x4", "pq", f"PQ{2 * m}x4np"))
        if "opq" in families:
            peers.append(FaissPeer(f"faiss_opq{m}_pq{m}x8", "opq", f"OPQ{m},PQ{m}x8np"))
    if "sq" in families:
        peers += [FaissPeer("faiss_sq4", "sq", "SQ4"), FaissPeer("faiss_sq8", "sq", "SQ8")]
    if "rabitq" in families:
        peers += [FaissPeer(f"faiss_rr_rabitq{bits}", "rabitq", f"RR{dim},RaBitQ{bits if bits > 1 else ''}",
                            query_bits=RABITQ_QUERY_BITS, reconstructs=False) for bits in (1, 2, 4)]
    if "st" in families:
        peers += [SentenceTransformersPeer("st_ubinary", "ubinary"), SentenceTransformersPeer("st_uint8", "uint8")]
    return peers


def within_budget(row: dict, budget: float) -> bool:
    """True when a row costs at most ``budget`` bytes per document, everything it stores counted.

    Rows that rescore from a paged float32 copy (``disk_bytes_per_vector > 0``, binary_rescore)
    never fit: their 4d bytes per document on disk are part of what they need to rank.
    """
    return not row.get("disk_bytes_per_vector") and float(row["bytes_per_vector"]) <= budget


def best_row_within(rows: Sequence[dict], budget: float) -> dict | None:
    """Our best row (highest NDCG@10) :func:`within_budget`; peers are not ours."""
    fitting = [row for row in rows if not row.get("peer") and within_budget(row, budget)]
    return max(fitting, key=lambda row: float(row["ndcg_at_10"]), default=None)


def evaluate_peers(embedded: EmbeddedDataset, dim: int, peers: Sequence[Peer], *, baseline: np.ndarray,
                   ours: Sequence[dict], ours_ndcg: dict[str, np.ndarray], reference: Reference, hits: int = 100,
                   seed: int = 0, n_resamples: int = 1000, bootstrap_seed: int = 0,
                   show_progress: bool = False) -> tuple[list[dict], list[dict]]:
    """Result rows and per-query rows of ``peers`` at ``dim``, shaped like our own rows.

    ``baseline`` is float32's per-query NDCG@10, ``ours`` our rows at this dim with their per-query
    NDCG@10 in ``ours_ndcg`` (by method), ``reference`` the :class:`~vespa_quant.evaluate.agreement.Reference`
    of this dim. Every query order is ``sorted(qrels)``, as in :func:`~vespa_quant.evaluate.runner.evaluate`.
    """
    dataset = embedded.dataset
    docs, queries = embedded.at_dim(dim)
    query_order = sorted(dataset.qrels)
    rows: list[dict] = []
    per_query: list[dict] = []
    for peer in tqdm(peers, desc=f"peers@{dim}", unit="peer", disable=not show_progress):
        started = time.perf_counter()
        fitted = peer.fit(docs, seed)
        values = score_hits(embedded, fitted.search(queries, hits))
        delta = paired_bootstrap(values[NDCG], baseline, n_resamples=n_resamples, seed=bootstrap_seed)
        sample = mse_sample_rows(len(docs), seed)
        reconstruction = fitted.reconstruction(sample)
        mse = None if reconstruction is None else relative_mse(np.asarray(docs)[sample], reconstruction)
        row: dict[str, Any] = {
            "dataset": dataset.name, "model": embedded.model, "dim": dim, "method": peer.name, "rotation": "none",
            "bits_per_dim": fitted.bytes_per_vector * 8 / dim, "bytes_per_vector": fitted.bytes_per_vector,
            "ndcg_at_10": float(values[NDCG].mean()),
            "ndcg_at_10_ci": list(bootstrap_ci(values[NDCG], n_resamples=n_resamples, seed=bootstrap_seed)),
            "recall_at_100": float(values[RECALL].mean()),
            "delta_vs_float32": delta.delta_mean, "delta_vs_float32_ci": [delta.ci_low, delta.ci_high],
            "delta_vs_float32_p": delta.p_value,
            "n_queries": len(query_order), "n_docs": len(dataset.doc_ids), "disk_bytes_per_vector": 0,
            "backend": "faiss", "peer": True, "peer_family": peer.family,
            "peer_config": f"{fitted.config}; top {hits} per query",
        }
        row.update(agreement_fields(reference, fitted.scores_at(queries, reference.rows), mse))
        best = best_row_within(ours, fitted.bytes_per_vector)
        if best is not None:
            versus = paired_bootstrap(values[NDCG], ours_ndcg[best["method"]], n_resamples=n_resamples,
                                      seed=bootstrap_seed)
            row.update({"best_ours_at_budget": best["method"], "delta_vs_best_ours": versus.delta_mean,
                        "delta_vs_best_ours_ci": [versus.ci_low, versus.ci_high],
                        "delta_vs_best_ours_p": versus.p_value})
        row["seconds"] = round(time.perf_counter() - started, 3)
        rows.append(row)
        per_query.extend(
            {"dim": dim, "method": peer.name, "query_id": qid,
             "ndcg_at_10": float(values[NDCG][i]), "recall_at_100": float(values[RECALL][i])}
            for i, qid in enumerate(query_order))
    return rows, per_query
