"""Issue 7, point 4: Vespa's own Java code judges the package, offline.

In the default run whenever ``java`` and ``mvn`` are on PATH (skipped with the reason otherwise).
The whole module costs one JVM start: every application checked here is one job of a single
:func:`run_checks` call -- the committed package (single node, with every profile of every method
on generated vectors, and the cluster variant), copies of it with a mutated expression, an unknown
field in an expression and two syntax errors, and a small app of global-phase and second-phase
profiles built here (to show what Vespa derives for the shapes the package did not choose).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from vespa.package import (
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

from vespa_quant.errors import VespaError
from vespa_quant.quantize.bits import pack_bits
from vespa_quant.quantize.registry import METHODS, get_method
from vespa_quant.quantize.scoring import hamming_matrix
from vespa_quant.vespa.check import (
    CheckReport,
    FixtureCase,
    TensorInput,
    checker_available,
    format_report,
    run_checks,
    write_fixtures,
)
from vespa_quant.vespa.check_cases import REPOSITORY_ROOT, method_cases, registry_cases
from vespa_quant.vespa.naming import has_exhaustive_profile, method_slots, rank_profile_name
from vespa_quant.vespa.services import assemble, single_node_services

pytestmark = pytest.mark.integration  # one JVM runs Vespa's compiler and evaluator over every profile: ~15 s; CI runs it (`pytest -m integration`)

DIMS = (384, 256)
MUTATED_PROFILE = rank_profile_name("lloyd_max_gauss", 384)
RERANK = 40


def unpack_bits(cells: np.ndarray, dim: int | None = None) -> np.ndarray:
    """(n, cells) int8 -> (n, 8*cells) float32 of 0/1, as Vespa's ``unpack_bits`` (MSB first)."""
    bits = np.unpackbits(np.ascontiguousarray(cells).view(np.uint8), axis=1)
    return bits[:, :dim].astype(np.float32) if dim else bits.astype(np.float32)


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)) * np.linspace(1.5, 0.5, dim) + rng.normal(0, 0.2, dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _vectors(n_docs: int = 120, n_queries: int = 3) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    rng = np.random.default_rng(11)
    docs = _unit(rng, n_docs, max(DIMS))
    queries = docs[:n_queries] + 0.3 * _unit(rng, n_queries, max(DIMS))
    return {d: docs[:, :d].copy() for d in DIMS}, {d: queries[:, :d].copy() for d in DIMS}


def _replace_in_profile(schema: Path, profile: str, original: str, replacement: str) -> None:
    text = schema.read_text()
    start = text.index(f"rank-profile {profile} {{")
    end = text.index("rank-profile", start + 1)
    block = text[start:end]
    assert original in block, f"{original!r} not in {profile}: update the test with the generator"
    schema.write_text(text[:start] + block.replace(original, replacement, 1) + text[end:])


def _phase_app(dest: Path) -> Path:
    """Hamming first phase, then the asymmetric score as global phase, as a match feature, or as second phase."""
    inputs = [("query(q_nn)", "tensor<int8>(x[48])"), ("query(w_hi)", "tensor<float>(x[384])"),
              ("query(w_lo)", "tensor<float>(x[384])"), ("query(offset)", "double")]
    asym = "sum(query(w_hi) * unpack_bits(attribute(hi)) + query(w_lo) * unpack_bits(attribute(lo))) + query(offset)"
    first = FirstPhaseRanking("closeness(field, hi)")
    profiles = [
        RankProfile("global_asym", first_phase=first, inputs=inputs,
                    global_phase=GlobalPhaseRanking(asym, rerank_count=RERANK)),
        RankProfile("global_match_feature", first_phase=first, inputs=inputs,
                    functions=[Function(name="asym", expression=asym)], match_features=["asym"],
                    global_phase=GlobalPhaseRanking("asym", rerank_count=RERANK)),
        RankProfile("second_asym", first_phase=first, inputs=inputs,
                    second_phase=SecondPhaseRanking(asym, rerank_count=RERANK)),
    ]
    fields = [Field("hi", "tensor<int8>(x[48])", indexing=["attribute"], attribute=["distance-metric: hamming"]),
              Field("lo", "tensor<int8>(x[48])", indexing=["attribute"])]
    package = ApplicationPackage(name="phases", schema=[Schema("doc", Document(fields=fields), rank_profiles=profiles)],
                                 services_config=single_node_services("phases"), create_query_profile_by_default=False)
    package.to_files(dest)
    return dest


def _phase_cases(n_docs: int = 300, n_queries: int = 4) -> list[FixtureCase]:
    rng = np.random.default_rng(5)
    hi, lo = (pack_bits(rng.random((n_docs, 384)) < 0.5) for _ in range(2))
    q_nn = pack_bits(rng.random((n_queries, 384)) < 0.5)
    w_hi, w_lo = (rng.standard_normal((n_queries, 384)).astype(np.float32) for _ in range(2))
    offset = rng.standard_normal(n_queries)
    attributes = {"hi": TensorInput("tensor<int8>(x[48])", hi), "lo": TensorInput("tensor<int8>(x[48])", lo)}
    queries = {"query(q_nn)": TensorInput("tensor<int8>(x[48])", q_nn),
               "query(w_hi)": TensorInput("tensor<float>(x[384])", w_hi),
               "query(w_lo)": TensorInput("tensor<float>(x[384])", w_lo), "query(offset)": TensorInput("double", offset)}
    closeness_map = {"closeness(field,hi)": ("hi", "query(q_nn)")}
    closeness = 1.0 / (1.0 + hamming_matrix(q_nn, hi))
    asym = (w_hi.astype(np.float64) @ unpack_bits(hi).T.astype(np.float64)
            + w_lo.astype(np.float64) @ unpack_bits(lo).T.astype(np.float64) + offset[:, None])
    candidates = np.argsort(-closeness, axis=1, kind="stable")[:, :RERANK]
    too_many = np.argsort(-closeness, axis=1, kind="stable")[:, :RERANK + 5]
    rescored = np.take_along_axis(asym, candidates, axis=1)

    def case(name: str, profile: str, phase, expected, rows=None) -> FixtureCase:
        return FixtureCase(name, profile, phase, attributes, queries, expected, closeness_map, rows)

    return [
        case("global_asym/first-phase", "global_asym", "first-phase", closeness),
        case("global_asym/global-phase", "global_asym", "global-phase", rescored, candidates),
        case("global_match_feature/global-phase", "global_match_feature", "global-phase", rescored, candidates),
        case("second_asym/second-phase", "second_asym", "second-phase", rescored, candidates),
        case("global_asym/global-phase/beyond-rerank-count", "global_asym", "global-phase",
             np.take_along_axis(asym, too_many, axis=1), too_many),
        case("global_asym/global-phase/wrong-scores", "global_asym", "global-phase", rescored[:, ::-1].copy(), candidates),
    ]


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, CheckReport]:
    reason = checker_available()
    if reason is not None:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("check")
    single = assemble(REPOSITORY_ROOT, "single", root / "single")
    docs, queries = _vectors()
    write_fixtures(registry_cases(list(METHODS.values()), docs, queries), root / "registry-fixtures")
    mutated = Path(shutil.copytree(single, root / "mutated"))
    _replace_in_profile(mutated / "schemas" / "doc.sd", MUTATED_PROFILE, "query(w_hi) * unpack_bits", "query(w_lo) * unpack_bits")
    gauss = get_method("lloyd_max_gauss")
    write_fixtures(method_cases(gauss, docs[384], queries[384], slots=method_slots(gauss)), root / "mutated-fixtures")
    unknown_field = Path(shutil.copytree(single, root / "unknown-field"))
    _replace_in_profile(unknown_field / "schemas" / "doc.sd", "float32_384_exhaustive", "attribute(float32_384_vector)",
                        "attribute(float32_348_vector)")
    schema_syntax = Path(shutil.copytree(single, root / "schema-syntax"))
    _replace_in_profile(schema_syntax / "schemas" / "doc.sd", "int8_asym_256", "first-phase {", "first-phase {{")
    expression_syntax = Path(shutil.copytree(single, root / "expression-syntax"))
    _replace_in_profile(expression_syntax / "schemas" / "doc.sd", "bfloat16_256_exhaustive",
                        "attribute(bfloat16_256_vector))", "attribute(bfloat16_256_vector)")
    write_fixtures(_phase_cases(), root / "phase-fixtures")
    jobs = {
        "single": (single, root / "registry-fixtures"),
        "cluster": (assemble(REPOSITORY_ROOT, "cluster", root / "cluster"), None),
        "mutated": (mutated, root / "mutated-fixtures"),
        "unknown-field": (unknown_field, None),
        "schema-syntax": (schema_syntax, None),
        "expression-syntax": (expression_syntax, None),
        "phases": (_phase_app(root / "phases"), root / "phase-fixtures"),
    }
    return dict(zip(jobs, run_checks(list(jobs.values()))))


def test_the_committed_package_compiles_and_every_profile_phase_matches(reports) -> None:
    report = reports["single"]
    assert report.compile_error is None
    assert report.ok, format_report(report)
    expected = set()
    for m in METHODS.values():
        for d in DIMS:
            for s in method_slots(m):
                expected.add(f"{rank_profile_name(m.name, d, s)}/first-phase")
                if m.name != "binary_hamming":
                    expected.add(f"{rank_profile_name(m.name, d, s)}/global-phase")
                if has_exhaustive_profile(m):
                    expected.add(f"{rank_profile_name(m.name, d, s, exhaustive=True)}/first-phase")
    assert {case.name for case in report.cases} == expected
    assert all(case.max_abs_diff is not None and case.max_abs_diff <= 1e-6 for case in report.cases)
    assert [m.reason for m in report.messages if m.level == "WARNING"], "the offline rank-setup warning is allowed, not hidden"


def test_the_cluster_variant_compiles(reports) -> None:
    report = reports["cluster"]
    assert report.compile_error is None and report.ok
    assert all(m.allowed for m in report.messages)


def test_a_mutated_expression_fails_naming_the_profile(reports) -> None:
    report = reports["mutated"]
    assert report.compile_error is None
    failed = {case.name: case.error for case in report.failed}
    assert set(failed) == {f"{MUTATED_PROFILE}/global-phase"}, format_report(report)
    assert f"rank profile {MUTATED_PROFILE}" in failed[f"{MUTATED_PROFILE}/global-phase"]


@pytest.mark.parametrize("job,named", [
    ("unknown-field", ["rank profile 'float32_384_exhaustive'", "attribute(float32_348_vector)"]),
    ("schema-syntax", ["doc.sd", "line"]),
    ("expression-syntax", ["bfloat16_256_exhaustive"]),
])
def test_schema_and_syntax_errors_fail_naming_the_file_or_profile(reports, job: str, named: list[str]) -> None:
    report = reports[job]
    assert report.compile_error is not None and not report.ok
    assert all(part in report.compile_error for part in named), report.compile_error
    with pytest.raises(VespaError, match="rejects the package"):
        report.raise_for_compile()


def test_global_and_second_phases_are_evaluated_as_vespa_derives_them(reports) -> None:
    report = reports["phases"]
    assert report.compile_error is None
    verdicts = {case.name: case for case in report.cases}
    for name in ("global_asym/first-phase", "global_asym/global-phase", "global_match_feature/global-phase",
                 "second_asym/second-phase"):
        assert verdicts[name].ok, verdicts[name].error
    assert verdicts["global_asym/global-phase"].rerank_count == RERANK
    assert "rerank-count" in verdicts["global_asym/global-phase/beyond-rerank-count"].error
    assert "top-10" in verdicts["global_asym/global-phase/wrong-scores"].error
    profiles = {profile["name"]: profile for profile in report.profiles}
    # The container gets the attributes a global phase reads as implicit match features ...
    assert set(profiles["global_asym"]["match_features"]) == {"attribute(hi)", "attribute(lo)"}
    # ... and unpack_bits arrives expanded to map_subspaces, which it evaluates in Java.
    assert "map_subspaces" in profiles["global_asym"]["phases"]["global-phase"]["expression"]
    # A function declared as a match feature is computed on the content node instead.
    assert profiles["global_match_feature"]["match_features"] == ["rankingExpression(asym)"]


# --- the Python side alone ------------------------------------------------------------------------

def _case(**overrides) -> FixtureCase:
    values = dict(name="c", profile="p", phase="first-phase",
                  attributes={"f": TensorInput("tensor<float>(x[2])", np.ones((3, 2), np.float32))},
                  queries={"query(q)": TensorInput("tensor<float>(x[2])", np.ones((2, 2), np.float32))},
                  expected=np.zeros((2, 3)))
    values.update(overrides)
    return FixtureCase(**values)  # type: ignore[arg-type]


def test_the_writer_shares_identical_arrays_and_writes_the_documented_index(tmp_path: Path) -> None:
    import json

    write_fixtures([_case(name="a"), _case(name="b")], tmp_path)
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["version"] == 1
    first, second = index["cases"]
    assert first["attributes"]["f"]["file"] == second["attributes"]["f"]["file"]
    assert (first["n_docs"], first["n_queries"], first["candidates"]) == (3, 2, None)
    assert (tmp_path / first["attributes"]["f"]["file"]).stat().st_size == 3 * 2 * 4


@pytest.mark.parametrize("overrides,message", [
    ({"expected": np.zeros((2, 4))}, "columns"),
    ({"attributes": {"f": TensorInput("tensor<bfloat16>(x[2])", np.full((3, 2), 0.1, np.float32))}}, "bfloat16"),
    ({"queries": {"query(q)": TensorInput("tensor<float>(x[3])", np.ones((2, 2)))}}, "expected 2 rows"),
    ({"candidates": np.full((2, 3), 7)}, "outside"),
])
def test_the_writer_rejects_what_vespa_could_not_hold(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(VespaError, match=message):
        write_fixtures([_case(**overrides)], tmp_path)


def test_without_java_the_reason_is_given(monkeypatch) -> None:
    monkeypatch.setenv("PATH", "")
    assert "java" in str(checker_available())


def test_the_cli_refuses_an_unknown_variant_with_exit_code_2() -> None:
    from typer.testing import CliRunner

    from vespa_quant.cli import app

    result = CliRunner().invoke(app, ["check-package", "--variant", "triple"])
    assert result.exit_code == 2
    assert "--variant" in result.output
