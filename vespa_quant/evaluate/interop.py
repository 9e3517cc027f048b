"""Our search results as BEIR's results dict, so BEIR's evaluator (or any of its tools) can judge them.

BEIR's retrievers return ``{query_id: {doc_id: score}}`` and ``EvaluateRetrieval.evaluate``
scores it with pytrec_eval, the same library our metrics use; handing BEIR our hits is how a
reader checks that our NDCG@10 is BEIR's NDCG@10 (``tests/test_beir_interop.py`` does so for
every registered method).
"""

from __future__ import annotations

from vespa_quant.data.beir import BeirDataset
from vespa_quant.engine.local import Hits
from vespa_quant.evaluate.metrics import Run, run_from_topk


def results_dict(dataset: BeirDataset, hits: Hits) -> Run:
    """``{query_id: {doc_id: score}}`` of ``hits``, one row per query of ``dataset``.

    Example::

        from beir.retrieval.evaluation import EvaluateRetrieval
        from vespa_quant.evaluate.interop import results_dict

        hits = search(method, calibration, codes, query_vectors, k=100)
        results = results_dict(dataset, hits)
        ndcg, _map, recall, precision = EvaluateRetrieval.evaluate(dataset.qrels, results, [10, 100])

    ``hits.indices`` are rows of ``dataset.doc_ids`` (``-1``: no hit) and rows of ``hits``
    follow ``dataset.query_ids``. Every hit is kept, including a document whose id equals its
    query's: BEIR's evaluator drops those itself (``ignore_identical_ids=True``), as
    :func:`~vespa_quant.evaluate.runner.score_hits` does. A query without any hit is still a
    key (an empty dict): pytrec_eval scores it 0 and BEIR's mean counts it, as ours does; a query
    left out of the dict entirely would be left out of BEIR's mean.
    """
    return run_from_topk(dataset.query_ids, dataset.doc_ids, hits.indices, hits.scores,
                         ignore_identical_ids=False)
