"""Issue 3, proof without Vespa: the committed rank profiles compute the engine's scores on SciFact.

Default run: a SciFact slice (every method, dims 384 and 256, both recalibration slots). ``-m slow``:
the full corpus. A mutated expression must make the check fail, so the check can fail; that
includes a slot-``b`` profile reading slot ``a``'s codes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vespa_quant.quantize.base import method_slots
from vespa_quant.quantize.registry import METHODS, get_method
from vespa_quant.vespa_app.offline_check import check_method, check_profiles
from vespa_quant.vespa_app.package import rank_profile_name
from vespa_quant.vespa_app.sd_parser import load_schema, parse_schema

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "doc.sd"
DIMS = (384, 256)


def _by_dim(embedded, n_queries: int):
    views = {dim: embedded.at_dim(dim) for dim in DIMS}
    return {d: v[0] for d, v in views.items()}, {d: v[1][:n_queries] for d, v in views.items()}


def _assert_all_ok(checks) -> None:
    assert {c.method for c in checks} == set(METHODS)
    assert {(c.method, c.slot) for c in checks} == {(m.name, s) for m in METHODS.values() for s in method_slots(m)}
    bad = [c for c in checks if not c.ok]
    assert not bad, bad


def test_every_profile_matches_the_engine_on_a_scifact_slice(scifact_slice_embedded) -> None:
    docs, queries = _by_dim(scifact_slice_embedded, n_queries=10)
    checks = check_profiles(load_schema(SCHEMA), list(METHODS.values()), docs, queries)
    _assert_all_ok(checks)
    calibrated = sum(m.needs_calibration for m in METHODS.values())
    assert len(checks) == 2 * (len(METHODS) + calibrated + 2)  # slot b + first phases of binary_hamming/rescore


@pytest.mark.slow
def test_every_profile_matches_the_engine_on_full_scifact(scifact_dir) -> None:
    from vespa_quant.embed.embedded import load_embedded

    docs, queries = _by_dim(load_embedded(scifact_dir, "all-MiniLM-L6-v2"), n_queries=20)
    _assert_all_ok(check_profiles(load_schema(SCHEMA), list(METHODS.values()), docs, queries))


MUTATIONS = [
    ("lloyd_max_gauss", "a", "query(w_hi) * unpack_bits(attribute(lloyd_max_gauss_384_hi))",
     "query(w_hi) * unpack_bits(attribute(lloyd_max_gauss_384_lo))"),
    ("binary_median_asym", "a", ") + query(offset)", ") - query(offset)"),
    ("quaternary_asym", "a", "query(w_both) * unpack_bits", "query(w_lo) * unpack_bits"),
    ("int8_asym", "a", "sum(query(q) * attribute(int8_asym_384_codes))", "sum(query(q) * attribute(int8_asym_384_codes)) * 0.5"),
    ("lloyd_max_gauss", "b", "unpack_bits(attribute(lloyd_max_gauss_384_hi_b))",
     "unpack_bits(attribute(lloyd_max_gauss_384_hi))"),  # slot b reading slot a's codes
    ("int8_asym", "b", "attribute(int8_asym_384_codes_b)", "attribute(int8_asym_384_codes)"),
]


@pytest.mark.parametrize("name,slot,original,mutant", MUTATIONS)
def test_a_mutated_expression_is_caught(name: str, slot: str, original: str, mutant: str,
                                        scifact_slice_embedded) -> None:
    profile = rank_profile_name(name, 384, slot)
    text = SCHEMA.read_text()
    start = text.index(f"rank-profile {profile} {{")
    end = text.index("rank-profile", start + 1)
    block = text[start:end]
    assert original in block, "mutation target not found: update the test with the generator"
    mutated = parse_schema(text[:start] + block.replace(original, mutant, 1) + text[end:])
    docs, queries = scifact_slice_embedded.at_dim(384)
    method = get_method(name)
    assert all(c.ok for c in check_method(load_schema(SCHEMA), method, docs, queries[:5], slot=slot))
    assert not all(c.ok for c in check_method(mutated, method, docs, queries[:5], slot=slot))
