"""Document JSON, document ids and query bodies: exact encodings, checked without any server."""

from __future__ import annotations

import re
from urllib.parse import quote

import numpy as np
import pytest

from vespa_quant.errors import VespaError
from vespa_quant.quantize.base import calibrate, encode, first_phase_query, query_inputs, sign_role
from vespa_quant.quantize.methods.float_methods import round_to_bfloat16
from vespa_quant.quantize.registry import METHODS
from vespa_quant.quantize.scoring import vector_cells_as_float
from vespa_quant.vespa.expressions import input_type
from vespa_quant.vespa.naming import (
    calibration_field_name,
    field_name,
    first_phase_field,
    first_phase_input,
    rank_profile_name,
    signs_field,
)
from vespa_quant.vespa.wire import (
    MAX_HITS,
    calibration_set_id,
    dataset_document_id,
    decode_tensor_hex,
    feed_documents,
    query_body,
    slot_calibration_count_body,
    tensor_json,
    update_operations,
    vespa_document_id,
)

DIMS = (384, 256)


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)) * np.linspace(1.5, 0.5, dim) + 0.1
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def encoded() -> dict:
    """Calibrations and codes of every method at 384 and 256 for 40 small random vectors."""
    rng = np.random.default_rng(3)
    docs384, queries384 = unit_rows(rng, 40, 384), unit_rows(rng, 5, 384)
    out = {}
    for dim in DIMS:
        docs = docs384[:, :dim] / np.linalg.norm(docs384[:, :dim], axis=1, keepdims=True)
        queries = queries384[:, :dim] / np.linalg.norm(queries384[:, :dim], axis=1, keepdims=True)
        for method in METHODS.values():
            calibration = calibrate(method, docs)
            out[(method.name, dim)] = (calibration, encode(method, docs, calibration), queries)
    return out


def test_hex_matches_the_document_json_reference_examples() -> None:
    # Document JSON format reference, "Cell values as binary data": tensor<int8>(x[6]) and the
    # float cells of its mixed-tensor example.
    assert tensor_json(np.array([-1, 0, 17, -128, 34, -2], dtype=np.int8), "int8") == {"values": "FF00118022FE"}
    floats = np.array([0.1111111119389534, 0.2222222238779068, 0.3333333432674408], dtype=np.float32)
    assert tensor_json(floats, "float") == {"values": "3DE38E393E638E393EAAAAAB"}
    assert tensor_json(np.array([1.0, -2.0]), "bfloat16") == {"values": "3F80C000"}


def test_hex_round_trips_every_cell_type() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(-128, 128, size=97).astype(np.int8)
    assert np.array_equal(decode_tensor_hex(tensor_json(codes, "int8")["values"], "int8"), codes)
    values = rng.standard_normal(33).astype(np.float32)
    assert np.array_equal(decode_tensor_hex(tensor_json(values, "float")["values"], "float"), values)
    assert np.array_equal(decode_tensor_hex(tensor_json(values, "bfloat16")["values"], "bfloat16"),
                          round_to_bfloat16(values))
    doubles = rng.standard_normal(5)
    assert np.array_equal(decode_tensor_hex(tensor_json(doubles, "double")["values"], "double"), doubles)
    with pytest.raises(VespaError, match="int8 cells"):
        tensor_json(np.array([300]), "int8")
    with pytest.raises(VespaError, match="no hex form"):
        tensor_json(values, "int4")


def _slot_a(encoded: dict) -> tuple[dict, dict]:
    codes = {(name, dim, "a"): codes for (name, dim), (_, codes, _) in encoded.items()}
    ids = {(name, dim, "a"): cal.id for (name, dim), (cal, _, _) in encoded.items()}
    return codes, ids


def test_feed_documents_round_trip_every_method_and_dim(encoded: dict) -> None:
    doc_ids = [f"doc-{i}" for i in range(40)]
    codes_by_slot, calibration_ids = _slot_a(encoded)
    codes_by_key = {key: codes for key, (_, codes, _) in encoded.items()}
    operations = list(feed_documents(doc_ids, codes_by_slot, METHODS, calibration_ids))
    assert [op["id"] for op in operations] == doc_ids
    for row, op in enumerate(operations):
        fields = op["fields"]
        assert fields["doc_id"] == doc_ids[row]
        for (name, dim), (calibration, _, _) in encoded.items():
            stored = fields.get(calibration_field_name(name, dim))
            assert stored == (calibration.id if METHODS[name].needs_calibration else None), name
        for (name, dim), codes in codes_by_key.items():
            for spec in METHODS[name].fields(dim):
                text = fields[field_name(name, dim, spec.role)]["values"]
                assert len(text) == spec.cells * {"int8": 2, "bfloat16": 4, "float": 8}[spec.cell_type]
                decoded = decode_tensor_hex(text, spec.cell_type)
                assert decoded.shape == (spec.cells,)
                assert np.array_equal(decoded, vector_cells_as_float(codes[spec.role][row:row + 1])[0]
                                      if spec.cell_type == "bfloat16" else codes[spec.role][row]), (name, dim, spec.role)
    calibrated = sum(METHODS[n].needs_calibration for n, _ in codes_by_key)
    expected_fields = 1 + calibrated + sum(len(METHODS[n].fields(d)) for n, d in codes_by_key)
    assert len(operations[0]["fields"]) == expected_fields


def test_puts_write_every_slot_given_and_updates_only_the_slot_given(encoded: dict) -> None:
    doc_ids = [f"doc-{i}" for i in range(40)]
    calibration, codes, _ = encoded[("lloyd_max_gauss", 256)]
    other = {role: np.roll(array, 1, axis=0) for role, array in codes.items()}
    both = {("lloyd_max_gauss", 256, "a"): codes, ("lloyd_max_gauss", 256, "b"): other}
    ids = {("lloyd_max_gauss", 256, "a"): calibration.id, ("lloyd_max_gauss", 256, "b"): "0123456789abcdef"}
    put = next(iter(feed_documents(doc_ids, both, METHODS, ids)))
    assert set(put["fields"]) == {"doc_id", "lloyd_max_gauss_256_calibration", "lloyd_max_gauss_256_hi",
                                  "lloyd_max_gauss_256_lo", "lloyd_max_gauss_256_calibration_b",
                                  "lloyd_max_gauss_256_hi_b", "lloyd_max_gauss_256_lo_b"}
    assert put["fields"]["lloyd_max_gauss_256_calibration_b"] == "0123456789abcdef"
    updates = list(update_operations(doc_ids, {("lloyd_max_gauss", 256, "b"): other}, METHODS, ids))
    assert [op["id"] for op in updates] == doc_ids
    for row, op in enumerate(updates):
        assert set(op["fields"]) == {"lloyd_max_gauss_256_calibration_b", "lloyd_max_gauss_256_hi_b",
                                     "lloyd_max_gauss_256_lo_b"}
        assert op["fields"]["lloyd_max_gauss_256_calibration_b"] == "0123456789abcdef"
        for role in ("hi", "lo"):
            decoded = decode_tensor_hex(op["fields"][f"lloyd_max_gauss_256_{role}_b"]["values"], "int8")
            assert np.array_equal(decoded, other[role][row])


def test_feed_documents_rejects_codes_that_do_not_fit(encoded: dict) -> None:
    calibration, codes, _ = encoded[("int8_asym", 384)]
    ids = {("int8_asym", 384, "a"): calibration.id}
    with pytest.raises(VespaError, match=r"int8_asym@384 codes: codes have shape \(40, 384\), expected \(39, 384\)"):
        list(feed_documents([str(i) for i in range(39)], {("int8_asym", 384, "a"): codes}, METHODS, ids))
    with pytest.raises(VespaError, match="roles"):
        list(feed_documents([str(i) for i in range(40)], {("int8_asym", 384, "a"): {"bits": codes["codes"]}},
                            METHODS, ids))
    with pytest.raises(VespaError, match="int8_asym@384 slot b: no calibration id"):
        list(update_operations([str(i) for i in range(40)], {("int8_asym", 384, "b"): codes}, METHODS, ids))
    _, float_codes, _ = encoded[("float32", 384)]
    with pytest.raises(VespaError, match=r"float32@384: slot 'b' does not exist; the method has slots \('a',\)"):
        list(feed_documents([str(i) for i in range(40)], {("float32", 384, "b"): float_codes}, METHODS, {}))


@pytest.mark.parametrize("doc_id", ["4983", "MED-10", "a/b", "../x", "..", "q?#&=", "α β", "~odd", "x%2Fy", ""])
def test_document_ids_are_url_safe_and_reversible(doc_id: str) -> None:
    vespa_id = vespa_document_id(doc_id)
    assert dataset_document_id(vespa_id) == doc_id
    path = quote(vespa_id)  # what pyvespa's get_document_v1_path does to the id
    assert "/" not in path and path.strip(".") and "%" not in path
    if re.fullmatch(r"[A-Za-z0-9._:-]+", doc_id) and doc_id.strip("."):
        assert vespa_id == doc_id


def test_document_ids_are_injective() -> None:
    ids = ["a/b", "a_b", "~YS9i", "YS9i", "..", ".", "...", "a b", "a+b"]
    assert len({vespa_document_id(i) for i in ids}) == len(ids)


def test_calibration_set_id_is_a_stable_label(encoded: dict) -> None:
    calibrations = {key: cal for key, (cal, _, _) in encoded.items()}
    first = calibration_set_id(calibrations)
    assert first == calibration_set_id(dict(reversed(list(calibrations.items()))))
    assert re.fullmatch(r"[0-9a-f]{16}", first)
    fewer = {k: v for k, v in calibrations.items() if k != ("int8_asym", 256)}
    assert calibration_set_id(fewer) != first
    with pytest.raises(VespaError, match="filed under"):
        calibration_set_id({("float32", 256): calibrations[("float32", 384)]})


def _row(encoded: dict, name: str, dim: int) -> tuple[dict, np.ndarray]:
    method = METHODS[name]
    calibration, _, queries = encoded[(name, dim)]
    inputs = query_inputs(method, queries, calibration)
    return {key: value[0] for key, value in inputs.items()}, first_phase_query(method, queries, calibration)[0]


@pytest.mark.parametrize("two_phase", [True, False])
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("name", list(METHODS))
def test_query_body_carries_every_declared_input(encoded: dict, name: str, dim: int, two_phase: bool) -> None:
    method = METHODS[name]
    if not two_phase and method.always_first_phase:
        pytest.skip(f"{name} has no exhaustive profile")
    row, nn = _row(encoded, name, dim)
    body = query_body(method, dim, row, hits=50, k1=77 if two_phase else None, nn_query=nn if two_phase else None)
    declared = {spec.name: input_type(spec) for spec in method.inputs(dim)}
    assert body["ranking.profile"] == rank_profile_name(name, dim, exhaustive=not two_phase)
    assert body["ranking.softtimeout.enable"] is False and body["hits"] == 50
    for key, type_ in declared.items():
        value = body[f"input.query({key})"]
        if type_ == "double":
            assert isinstance(value, float)
        else:
            cells = int(re.search(r"x\[(\d+)\]", type_).group(1))
            assert isinstance(value, list) and len(value) == cells
            if "int8" in type_:
                assert all(isinstance(v, int) and -128 <= v <= 127 for v in value)
            np.testing.assert_array_equal(np.asarray(value, dtype=np.float32), row[key])
    summary = f"doc_id, {name}_{dim}_calibration" if method.needs_calibration else "doc_id"
    assert body["yql"].startswith(f"select {summary} from doc where ")
    allowed = {f"input.query({k})" for k in declared} | {"yql", "ranking.profile", "hits", "timeout",
                                                         "ranking.softtimeout.enable"}
    if two_phase:
        nn_name = first_phase_input(method, dim)
        bits = first_phase_field(method, dim)
        assert bits == (signs_field(dim) if sign_role(method) is None else field_name(name, dim, sign_role(method)))
        assert f"{{targetHits:77, approximate:false}}nearestNeighbor({bits}, {nn_name})" in body["yql"]
        assert body[f"input.query({nn_name})"] == nn.astype(int).tolist()
        assert body["ranking.globalPhase.rerankCount"] == 77
        allowed |= {f"input.query({nn_name})", "ranking.globalPhase.rerankCount"}
    else:
        assert body["yql"].endswith("where true")
    assert set(body) <= allowed


@pytest.mark.parametrize("name", ["lloyd_max_gauss", "binary_median_asym", "int8_asym"])
def test_slot_b_queries_read_slot_b(encoded: dict, name: str) -> None:
    method = METHODS[name]
    row, nn = _row(encoded, name, 256)
    a = query_body(method, 256, row, hits=10, k1=50, nn_query=nn)
    b = query_body(method, 256, row, hits=10, k1=50, nn_query=nn, slot="b")
    assert (a["ranking.profile"], b["ranking.profile"]) == (f"{name}_256", f"{name}_256_b")
    assert b["yql"].startswith(f"select doc_id, {name}_256_calibration_b from doc where ")
    if sign_role(method):
        bits = field_name(name, 256, sign_role(method))
        assert f"nearestNeighbor({bits}_b, " in b["yql"] and f"nearestNeighbor({bits}, " in a["yql"]
    else:
        assert "nearestNeighbor(signs_256, q_nn)" in a["yql"] and "nearestNeighbor(signs_256, q_nn)" in b["yql"]
    assert {k: v for k, v in a.items() if k not in ("yql", "ranking.profile")} == \
        {k: v for k, v in b.items() if k not in ("yql", "ranking.profile")}
    with pytest.raises(VespaError, match="float32@256: slot 'b' does not exist"):
        query_body(METHODS["float32"], 256, _row(encoded, "float32", 256)[0], hits=10, k1=None, nn_query=None, slot="b")


def test_slot_calibration_count_is_an_exact_attribute_match() -> None:
    body = slot_calibration_count_body("int8_asym", 384, "b", "0123456789abcdef")
    assert body["yql"] == 'select * from doc where int8_asym_384_calibration_b contains "0123456789abcdef"'
    assert body["hits"] == 0
    with pytest.raises(VespaError, match="not lowercase hex"):
        slot_calibration_count_body("int8_asym", 384, "b", 'x" or true or "')


def test_puts_carry_the_shared_sign_bits(encoded: dict) -> None:
    doc_ids = [f"doc-{i}" for i in range(40)]
    calibration, codes, _ = encoded[("float32", 256)]
    signs = np.packbits(codes["vector"] > 0, axis=1).view(np.int8)
    put = next(iter(feed_documents(doc_ids, {("float32", 256, "a"): codes}, METHODS, {}, {256: signs})))
    np.testing.assert_array_equal(decode_tensor_hex(put["fields"]["signs_256"]["values"], "int8"), signs[0])
    with pytest.raises(VespaError, match=r"signs_256: shape \(39, 32\)"):
        next(iter(feed_documents(doc_ids, {("float32", 256, "a"): codes}, METHODS, {}, {256: signs[1:]})))


def test_query_body_errors_name_the_profile(encoded: dict) -> None:
    method = METHODS["binary_asym"]
    row, nn = _row(encoded, "binary_asym", 384)
    with pytest.raises(VespaError, match=rf"hits=401 must be in \[1, {MAX_HITS}\]"):
        query_body(method, 384, row, hits=401, k1=None, nn_query=None)
    with pytest.raises(VespaError, match=r"binary_asym_384_exhaustive: query inputs \['w_bits'\] .*missing \['offset'\]"):
        query_body(method, 384, {"w_bits": row["w_bits"]}, hits=10, k1=None, nn_query=None)
    with pytest.raises(VespaError, match=r"query\(w_bits\) has shape \(256,\), declared tensor<float>\(x\[384\]\)"):
        query_body(method, 384, {**row, "w_bits": row["w_bits"][:256]}, hits=10, k1=None, nn_query=None)
    with pytest.raises(VespaError, match="needs the packed query bits"):
        query_body(method, 384, row, hits=10, k1=100, nn_query=None)
    with pytest.raises(VespaError, match="at least hits=20"):
        query_body(method, 384, row, hits=20, k1=10, nn_query=nn)
    with pytest.raises(VespaError, match="defined by its Hamming first phase"):
        query_body(METHODS["binary_hamming"], 384, _row(encoded, "binary_hamming", 384)[0], hits=10, k1=None,
                   nn_query=None)
