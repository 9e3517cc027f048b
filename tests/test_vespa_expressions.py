"""The offline Vespa interpreter agrees with direct numpy on pyvespa-rendered rank profiles."""

from __future__ import annotations

import numpy as np
import pytest
from vespa.package import (
    HNSW,
    ApplicationPackage,
    Document,
    Field,
    FirstPhaseRanking,
    Function,
    GlobalPhaseRanking,
    RankProfile,
    Schema,
    SecondPhaseRanking,
)

from vespa_quant.errors import VespaQuantError
from vespa_quant.vespa_app.expressions import ExpressionError, evaluate, parse
from vespa_quant.vespa_app.sd_parser import (
    SchemaError,
    load_schema,
    parse_schema,
    rank_profile_scorer,
)

N_DOCS = 7
TWO_BIT_PLANES = (
    "sum(query(a)*unpack_bits(attribute(hi)) + query(b)*unpack_bits(attribute(lo))"
    " + query(c)*unpack_bits(attribute(hi))*unpack_bits(attribute(lo)))"
)


def _bfloat16(values: np.ndarray) -> np.ndarray:
    """What Vespa stores for a bfloat16 cell: the float32 with its low 16 bits cleared."""
    bits = values.astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
    return bits.view(np.float32)


def _bits(codes: np.ndarray, bitorder: str = "big") -> np.ndarray:
    return np.unpackbits(codes.view(np.uint8), axis=-1, bitorder=bitorder).astype(np.float64)


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.unpackbits(np.bitwise_xor(a.view(np.uint8), b.view(np.uint8)), axis=-1).sum(axis=-1)


def _schema() -> Schema:
    int8_field = dict(type="tensor<int8>(x[2])", indexing=["attribute"])
    fields = [
        Field(name="id", type="string", indexing=["summary", "attribute"]),
        Field(name="emb", type="tensor<float>(x[16])", indexing=["attribute"]),
        Field(
            name="bits",
            type="tensor<int8>(x[2])",
            indexing=["attribute", "index"],
            ann=HNSW(distance_metric="hamming"),
        ),
        Field(
            name="bf", type="tensor<bfloat16>(x[16])", indexing=["attribute"], attribute=["paged"]
        ),
        Field(name="hi", **int8_field),
        Field(name="lo", **int8_field),
    ]
    float16 = "tensor<float>(x[16])"
    profiles = [
        RankProfile(
            name="float_dot",
            inputs=[("query(q)", float16)],
            first_phase="sum(query(q) * attribute(emb))",
        ),
        RankProfile(
            name="binary",
            inputs=[("query(w)", float16), ("query(offset)", "double", "0.25")],
            first_phase="sum(query(w) * unpack_bits(attribute(bits))) + query(offset)",
        ),
        RankProfile(
            name="binary_little",
            inputs=[("query(w)", float16)],
            first_phase="sum(query(w) * unpack_bits(attribute(bits), float, little))",
        ),
        RankProfile(
            name="two_bit",
            inputs=[("query(a)", float16), ("query(b)", float16), ("query(c)", float16)],
            first_phase=TWO_BIT_PLANES,
        ),
        RankProfile(
            name="hamming_ann",
            inputs=[("query(qb)", "tensor<int8>(x[2])"), ("query(q)", float16)],
            functions=[
                Function("coarse", "closeness(field, bits)"),
                Function("ham", "sum(hamming(query(qb), attribute(bits)))"),
                Function("fine", "sum(query(q) * attribute(bf))"),
                Function("blend", "fine() -\n    ham / 16"),
            ],
            first_phase=FirstPhaseRanking("coarse", keep_rank_count=500),
            second_phase=SecondPhaseRanking("blend", rerank_count=100),
            global_phase=GlobalPhaseRanking("fine + 2 * coarse", rerank_count=10),
        ),
        RankProfile(name="child", inherits="hamming_ann", first_phase="ham"),
    ]
    return Schema(name="doc", document=Document(fields=fields), rank_profiles=profiles)


@pytest.fixture(scope="module")
def schema(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    ApplicationPackage(name="quantapp", schema=[_schema()]).to_files(root)
    return load_schema(root / "schemas" / "doc.sd")


@pytest.fixture(scope="module")
def docs():
    rng = np.random.default_rng(7)
    codes = lambda: rng.integers(-128, 128, size=(N_DOCS, 2)).astype(np.int8)  # noqa: E731
    return {
        "emb": rng.normal(size=(N_DOCS, 16)).astype(np.float32),
        "bits": codes(),
        "bf": _bfloat16(rng.normal(size=(N_DOCS, 16))),
        "hi": codes(),
        "lo": codes(),
    }


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(11)
    return {name: rng.normal(size=16).astype(np.float32) for name in ("q", "w", "a", "b", "c")}


# --------------------------------------------------------------------------- schema parsing


def test_rendered_schema_parses_back(schema):
    assert schema.name == "doc"
    assert schema.fields["emb"].type == "tensor<float>(x[16])"
    assert schema.fields["bf"].type == "tensor<bfloat16>(x[16])"
    assert schema.fields["bf"].attribute_settings == ("paged",)
    bits = schema.fields["bits"]
    assert (bits.type, bits.distance_metric, bits.hnsw) == ("tensor<int8>(x[2])", "hamming", True)
    assert bits.indexing == ("attribute", "index")
    assert bits.hnsw_settings == {
        "max-links-per-node": "16",
        "neighbors-to-explore-at-insert": "200",
    }
    assert not schema.fields["emb"].hnsw

    profile = schema.rank_profiles["hamming_ann"]
    assert profile.inputs == {"query(qb)": "tensor<int8>(x[2])", "query(q)": "tensor<float>(x[16])"}
    assert profile.functions["blend"] == "fine() -\n    ham / 16"
    assert profile.first_phase.keep_rank_count == 500
    assert profile.second_phase.rerank_count == 100
    assert (profile.global_phase.expression, profile.global_phase.rerank_count) == (
        "fine + 2 * coarse",
        10,
    )
    assert schema.rank_profiles["binary"].input_defaults == {"query(offset)": "0.25"}
    assert schema.rank_profiles["child"].inherits == ("hamming_ann",)


def test_inheritance_merges_parent_definitions(schema):
    child = schema.resolved_profile("child")
    assert child.first_phase.expression == "ham"
    assert child.second_phase == schema.rank_profiles["hamming_ann"].second_phase
    assert set(child.functions) == {"coarse", "ham", "fine", "blend"}


def test_hand_written_forms():
    text = """
    # a comment { with braces }
    schema s {
        document s {
            field v type tensor<float>(x[4]) { indexing: attribute | index
                attribute { distance-metric: euclidean }
            }
        }
        field synth type tensor<int8>(x[1]) { indexing: input v | attribute }
        rank-profile p {
            inputs {
                query(t) tensor<float>(x[4])
                query(k): 3
            }
            constants {
                scale: 2.5
                shift tensor(x[4]): [1, 2, 3, 4]
            }
            function inline f() { expression: sum(query(t) *
                                                  attribute(v)) }
            function g() {
                expression {
                    reduce(
                      query(t) * constant(shift), max
                    ) * constant(scale) # trailing comment
                }
            }
            first-phase { expression: f + g + query(k) }
        }
    }
    """
    parsed = parse_schema(text, source="hand.sd")
    assert parsed.fields["v"].hnsw and parsed.fields["v"].distance_metric == "euclidean"
    assert not parsed.fields["synth"].in_document
    assert parsed.rank_profiles["p"].functions["f"] == (
        "sum(query(t) *\n                                                  attribute(v))"
    )
    v = np.arange(8, dtype=np.float32).reshape(2, 4)
    t = np.array([0.5, -1.0, 2.0, 0.25], dtype=np.float32)
    scores = rank_profile_scorer(parsed, "p")({"v": v}, {"t": t})
    expected = v @ t + np.max(t * [1, 2, 3, 4]) * 2.5 + 3
    np.testing.assert_allclose(scores, expected, rtol=1e-12)


# --------------------------------------------------------------------------- scores vs numpy


def test_float_dot_product(schema, docs, weights):
    scores = rank_profile_scorer(schema, "float_dot")(docs, {"q": weights["q"]})
    expected = docs["emb"].astype(np.float64) @ weights["q"].astype(np.float64)
    np.testing.assert_allclose(scores, expected, rtol=1e-12)
    assert scores.shape == (N_DOCS,) and scores.dtype == np.float64


def test_unpacked_bits_dot_product_with_default_offset(schema, docs, weights):
    scorer = rank_profile_scorer(schema, "binary")
    expected = _bits(docs["bits"]) @ weights["w"] + 0.25
    np.testing.assert_allclose(scorer(docs, {"w": weights["w"]}), expected, rtol=1e-12)
    np.testing.assert_allclose(
        scorer(docs, {"w": weights["w"], "offset": -3.0}), expected - 3.25, rtol=1e-12
    )


def test_little_endian_unpack(schema, docs, weights):
    scores = rank_profile_scorer(schema, "binary_little")(docs, {"w": weights["w"]})
    np.testing.assert_allclose(scores, _bits(docs["bits"], "little") @ weights["w"], rtol=1e-12)
    assert not np.allclose(scores, _bits(docs["bits"]) @ weights["w"])


def test_unpack_bits_matches_vespa_doc_example():
    # ranking-expressions reference: tensor<int8>(x[1]):[9] -> [0,0,0,0,1,0,0,1]
    one_hot = np.eye(8)
    for position in range(8):
        value = evaluate(
            "sum(query(e) * unpack_bits(attribute(v)))",
            attributes={"v": np.array([[9]], dtype=np.int8)},
            query={"e": one_hot[position]},
        )
        assert value[0] == [0, 0, 0, 0, 1, 0, 0, 1][position]


def test_two_bit_planes(schema, docs, weights):
    query = {name: weights[name] for name in "abc"}
    scores = rank_profile_scorer(schema, "two_bit")(docs, query)
    hi, lo = _bits(docs["hi"]), _bits(docs["lo"])
    expected = hi @ weights["a"] + lo @ weights["b"] + (hi * lo) @ weights["c"]
    np.testing.assert_allclose(scores, expected, rtol=1e-12)


def test_hamming_closeness_and_phases(schema, docs, weights):
    qb = np.array([37, -90], dtype=np.int8)
    query = {"qb": qb, "q": weights["q"]}
    nearest = {"bits": "qb"}
    distance = _hamming(docs["bits"], qb).astype(np.float64)
    closeness = 1.0 / (1.0 + distance)
    fine = docs["bf"].astype(np.float64) @ weights["q"].astype(np.float64)

    def phase(name):
        return rank_profile_scorer(schema, "hamming_ann", name)(docs, query, nearest)

    np.testing.assert_allclose(phase("first"), closeness, rtol=1e-15)
    np.testing.assert_allclose(phase("second"), fine - distance / 16, rtol=1e-12)
    np.testing.assert_allclose(phase("global"), fine + 2 * closeness, rtol=1e-12)
    np.testing.assert_array_equal(phase("final"), phase("global"))
    child_first = rank_profile_scorer(schema, "child", "first")(docs, query, nearest)
    np.testing.assert_array_equal(child_first, distance)


def test_hamming_function_and_distance_feature(docs):
    qb = np.array([-1, 0], dtype=np.int8)
    inputs = dict(attributes={"bits": docs["bits"]}, query={"qb": qb})
    expected = _hamming(docs["bits"], qb)
    summed = evaluate("sum(hamming(query(qb), attribute(bits)))", **inputs)
    np.testing.assert_array_equal(summed, expected)
    distance = evaluate(
        "distance(field, bits)",
        nearest_neighbor={"bits": "qb"},
        distance_metrics={"bits": "hamming"},
        **inputs,
    )
    np.testing.assert_array_equal(distance, expected)


def test_function_calls_with_and_without_parentheses():
    functions = {"two": "1 + 1", "four": "two * two()", "eight": "four + four()"}
    scores = evaluate("eight - two", attributes={"x": np.zeros(3)}, query={}, functions=functions)
    np.testing.assert_array_equal(scores, [6.0, 6.0, 6.0])


def test_operator_precedence_and_numbers():
    def value(text):
        return evaluate(text, attributes={}, query={})[0]

    assert value("1 - 2 - 3") == -4
    assert value("8 / 4 / 2") == 1
    assert value("2 + 3 * 4") == 14
    assert value("(2 + 3) * 4") == 20
    assert value("-2 * -3 - -1") == 7
    assert value("1e-3 * 2E+3 + .5") == 2.5


def test_join_outer_product_and_reduce_over_one_dimension():
    a = np.array([1.0, 2.0, 3.0])
    b = np.array([10.0, 20.0])
    inputs = dict(
        attributes={},
        query={"a": a, "b": b},
        query_types={"a": "tensor(x[3])", "b": "tensor(y[2])"},
    )
    assert evaluate("sum(query(a) * query(b))", **inputs)[0] == np.outer(a, b).sum()
    assert evaluate("reduce(reduce(query(a) * query(b), sum, x), max)", **inputs)[0] == 120
    mean = evaluate("reduce(query(a) + query(b), avg, x, y)", **inputs)[0]
    assert mean == (a[:, None] + b).mean()


def test_query_inputs_take_declared_cell_types():
    q = np.array([0.1, 1 / 3])
    exact = evaluate("sum(query(q))", attributes={}, query={"q": q})[0]
    as_float = evaluate(
        "sum(query(q))", attributes={}, query={"q": q}, query_types={"q": "tensor<float>(x[2])"}
    )[0]
    assert exact == q.sum()
    assert as_float == q.astype(np.float32).astype(np.float64).sum()


# --------------------------------------------------------------------------- errors


def test_unknown_names_list_what_is_available(docs):
    available = r"unknown attribute 'nope' \(attributes given: bf, bits, emb, hi, lo\)"
    with pytest.raises(ExpressionError, match=available):
        evaluate("sum(attribute(nope))", attributes=docs, query={})
    with pytest.raises(ExpressionError, match=r"unknown query input 'w' \(query inputs given: q\)"):
        evaluate("sum(query(w) * attribute(emb))", attributes=docs, query={"q": np.ones(16)})
    with pytest.raises(
        ExpressionError, match=r"unknown function 'foo' .* at column 5 in \"sum\(foo\(x\)\)\""
    ):
        evaluate("sum(foo(x))", attributes=docs, query={})
    with pytest.raises(ExpressionError, match=r"unknown feature 'bar' \(rank-profile functions: f"):
        evaluate("f + bar", attributes=docs, query={}, functions={"f": "1"})
    with pytest.raises(ExpressionError, match="needs a nearestNeighbor operator on 'bits'"):
        evaluate("closeness(field, bits)", attributes=docs, query={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty expression"),
        ("1 +", r"expected a number, name or '\(', found end of expression at column 4"),
        ("sum(query(q) * )", r"found '\)' at column 16"),
        ("(1 + 2", r"expected '\)', found end of expression"),
        ("1 2", r"unexpected '2' after a complete expression at column 3"),
        ("2 ^ 3", r"unsupported character '\^'"),
        ("attribute(1)", "expected a name inside attribute"),
        ("reduce(attribute(emb), median)", "unknown aggregator 'median'"),
        ("unpack_bits(attribute(bits), float, middle)", "endian must be 'big' or 'little'"),
        ("closeness(bits)", r"closeness\(\) takes 2 argument\(s\), got 1"),
        ("f +\n  ) ", r"at line 2, column 3 in \"  \) \""),
    ],
)
def test_malformed_syntax(text, message):
    with pytest.raises(ExpressionError, match=message):
        parse(text)


def test_function_cycle_is_reported(docs):
    functions = {"a": "b + 1", "b": "2 * c", "c": "a"}
    with pytest.raises(ExpressionError, match="function cycle a -> b -> c -> a"):
        evaluate("a", attributes=docs, query={}, functions=functions)
    cyclic = parse_schema(
        "schema s { rank-profile p { function x() { expression: y }"
        " function y() { expression: x() * 2 } first-phase { expression: x } } }"
    )
    with pytest.raises(ExpressionError, match=r"rank-profile 'p' first-phase: .*cycle x -> y -> x"):
        rank_profile_scorer(cyclic, "p")({}, {})


def test_type_errors(docs):
    with pytest.raises(
        ExpressionError, match=r"cannot join tensor<float>\(x\[16\]\) with tensor<int8>\(x\[2\]\)"
    ):
        evaluate("sum(attribute(emb) * attribute(bits))", attributes=docs, query={})
    with pytest.raises(ExpressionError, match=r"unpack_bits\(\) needs a tensor with int8 cells"):
        evaluate("sum(unpack_bits(attribute(bits) * 1))", attributes=docs, query={})
    with pytest.raises(ExpressionError, match="not a scalar rank score"):
        evaluate("attribute(emb)", attributes=docs, query={})
    unrounded = {"bf": docs["bf"] + np.float32(1e-3)}
    with pytest.raises(ExpressionError, match="not bfloat16-representable"):
        evaluate(
            "sum(attribute(bf))",
            attributes=unrounded,
            query={},
            field_types={"bf": "tensor<bfloat16>(x[16])"},
        )


def test_scorer_and_schema_errors(schema):
    with pytest.raises(SchemaError, match="no rank-profile 'missing'"):
        rank_profile_scorer(schema, "missing")
    with pytest.raises(SchemaError, match=r"has no second-phase \(it has: first\)"):
        rank_profile_scorer(schema, "float_dot", "second")
    with pytest.raises(SchemaError, match="hand.sd line 3: block is never closed"):
        parse_schema("schema s {\n  rank-profile p {\n    first-phase {\n", source="hand.sd")
    assert issubclass(ExpressionError, VespaQuantError) and issubclass(SchemaError, VespaQuantError)
