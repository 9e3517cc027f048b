"""Issue 3, proof without Vespa: the committed rank profiles compute the engine's scores on SciFact.

Default run: a SciFact slice (every method, dims 384 and 256). ``-m slow``: the full corpus.
A mutated expression must make the check fail, so the check can fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vespa_quant.quantize.registry import METHODS, get_method
from vespa_quant.vespa_app.offline_check import check_method, check_profiles
from vespa_quant.vespa_app.sd_parser import load_schema, parse_schema

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "doc.sd"
DIMS = (384, 256)


def _by_dim(embedded, n_queries: int):
    views = {dim: embedded.at_dim(dim) for dim in DIMS}
    return {d: v[0] for d, v in views.items()}, {d: v[1][:n_queries] for d, v in views.items()}


def _assert_all_ok(checks) -> None:
    assert {c.profile.rsplit("_", 1)[0] for c in checks} == set(METHODS)
    bad = [c for c in checks if not c.ok]
    assert not bad, bad


def test_every_profile_matches_the_engine_on_a_scifact_slice(scifact_slice_embedded) -> None:
    docs, queries = _by_dim(scifact_slice_embedded, n_queries=10)
    checks = check_profiles(load_schema(SCHEMA), list(METHODS.values()), docs, queries)
    _assert_all_ok(checks)
    assert len(checks) == 2 * (len(METHODS) + 2)  # + first phases of binary_hamming/rescore


@pytest.mark.slow
def test_every_profile_matches_the_engine_on_full_scifact(scifact_dir) -> None:
    from vespa_quant.evaluate.runner import load_embedded

    docs, queries = _by_dim(load_embedded(scifact_dir, "all-MiniLM-L6-v2"), n_queries=20)
    _assert_all_ok(check_profiles(load_schema(SCHEMA), list(METHODS.values()), docs, queries))


MUTATIONS = [
    ("lloyd_max_gauss_384", "query(w_hi) * unpack_bits(attribute(lloyd_max_gauss_384_hi))",
     "query(w_hi) * unpack_bits(attribute(lloyd_max_gauss_384_lo))"),
    ("binary_median_asym_384", ") + query(offset)", ") - query(offset)"),
    ("quaternary_asym_384", "query(w_both) * unpack_bits", "query(w_lo) * unpack_bits"),
    ("int8_asym_384", "sum(query(q) * attribute(int8_asym_384_codes))", "sum(query(q) * attribute(int8_asym_384_codes)) * 0.5"),
]


@pytest.mark.parametrize("profile,original,mutant", MUTATIONS)
def test_a_mutated_expression_is_caught(profile: str, original: str, mutant: str, scifact_slice_embedded) -> None:
    text = SCHEMA.read_text()
    start = text.index(f"rank-profile {profile} {{")
    end = text.index("rank-profile", start + 1)
    block = text[start:end]
    assert original in block, "mutation target not found: update the test with the generator"
    mutated = parse_schema(text[:start] + block.replace(original, mutant, 1) + text[end:])
    docs, queries = scifact_slice_embedded.at_dim(384)
    method = get_method(profile.rsplit("_", 1)[0])
    assert all(c.ok for c in check_method(load_schema(SCHEMA), method, docs, queries[:5]))
    assert not all(c.ok for c in check_method(mutated, method, docs, queries[:5]))
