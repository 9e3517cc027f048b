"""Supply chain and embedding hygiene (issue 8): safe model names, pinned remote code, checked
vectors from the model, the cache and bring-your-own files. Generated data only, no model."""

from __future__ import annotations

import hashlib
import json
import re
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from vespa_quant.data.beir import BeirDataset
from vespa_quant.embed import encoder
from vespa_quant.embed.cache import cache_path, embed_dataset, embed_texts, load_precomputed, seed_cache
from vespa_quant.embed.models import ModelSpec, check_remote_code_pinned, get_model_spec
from vespa_quant.errors import EmbeddingError

NOMIC_REVISION = "b0753ae76394dd36bcfb912a46018088bca48be0"
NOMIC_CODE_REVISION = "7710840340a098cfb869c4f65e87cf2b1b70caca"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# --- model names never leave the cache folder -----------------------------------------------


@pytest.mark.parametrize("name", ["..", "/abs", "a/../../b", "org/..", "a/b/c", "", "x\\..\\y", "@main"])
def test_unsafe_model_names_are_rejected(name: str, tmp_path: Path) -> None:
    with pytest.raises(EmbeddingError, match=r"model name .*: expected a hub id") as caught:
        get_model_spec(name)
    one_line(caught)
    with pytest.raises(EmbeddingError, match=r"model name"):
        cache_path(name, ["a"], "query", tmp_path)


def test_spec_built_by_hand_cannot_escape_either() -> None:
    with pytest.raises(EmbeddingError, match=r"model name '\.\./x'"):
        _ = ModelSpec(name="../x", hub_id="x", dim=None).slug


@pytest.mark.parametrize("name", ["all-MiniLM-L6-v2", "BAAI/bge-small-en-v1.5", "my.model_v2",
                                  f"nomic-embed-text-v1.5@{COMMIT}", "org/name@refs/pr/1"])
def test_cache_files_stay_inside_the_cache_dir(name: str, tmp_path: Path) -> None:
    path = cache_path(name, ["a"], "document", tmp_path).resolve()
    assert path.parent.parent == tmp_path.resolve()


# --- revisions --------------------------------------------------------------------------------


def test_nomic_is_pinned_for_weights_and_code() -> None:
    nomic = get_model_spec("nomic-embed-text-v1.5")
    assert (nomic.revision, nomic.code_revision) == (NOMIC_REVISION, NOMIC_CODE_REVISION)
    check_remote_code_pinned(nomic)


def test_revision_override_and_cache_keys(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("VESPA_QUANT_MODEL_CODE_REVISION", raising=False)
    pinned = get_model_spec(f"nomic-ai/nomic-embed-text-v1.5@{COMMIT}")
    assert (pinned.name, pinned.revision, pinned.code_revision) == (
        "nomic-embed-text-v1.5", COMMIT, NOMIC_CODE_REVISION)
    default = cache_path("nomic-embed-text-v1.5", ["a"], "query", tmp_path)
    assert cache_path(f"nomic-embed-text-v1.5@{COMMIT}", ["a"], "query", tmp_path) != default
    assert cache_path(f"nomic-embed-text-v1.5@{NOMIC_REVISION}", ["a"], "query", tmp_path) == default
    monkeypatch.setenv("VESPA_QUANT_MODEL_CODE_REVISION", COMMIT)
    assert get_model_spec("nomic-embed-text-v1.5").code_revision == COMMIT
    assert cache_path("nomic-embed-text-v1.5", ["a"], "query", tmp_path) != default
    # Models without remote code ignore the code revision setting...
    assert get_model_spec("all-MiniLM-L6-v2").code_revision is None
    # ...and unpinned models keep the keys they had, so existing caches stay valid.
    header = json.dumps(["all-MiniLM-L6-v2", "query", "", 1]).encode()
    old_key = hashlib.sha256(header + b"\x00" + b"a").hexdigest()[:16]
    assert cache_path("all-MiniLM-L6-v2", ["a"], "query", tmp_path).name == f"query-{old_key}.npy"


@pytest.fixture
def recorded_loads(monkeypatch) -> list[tuple[str, dict]]:
    """A stand-in ``sentence_transformers`` module that records how models are constructed."""
    calls: list[tuple[str, dict]] = []

    def sentence_transformer(name_or_path: str, **kwargs):
        calls.append((name_or_path, kwargs))
        return object()

    fake = types.ModuleType("sentence_transformers")
    fake.SentenceTransformer = sentence_transformer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sentence_transformers", fake)
    return calls


def test_remote_code_model_is_loaded_at_pinned_commits(recorded_loads) -> None:
    encoder.load_model("nomic-embed-text-v1.5")
    ((name, kwargs),) = recorded_loads
    assert name == "nomic-ai/nomic-embed-text-v1.5"
    assert kwargs["revision"] == NOMIC_REVISION and kwargs["trust_remote_code"] is True
    assert kwargs["model_kwargs"] == {"code_revision": NOMIC_CODE_REVISION}
    assert kwargs["config_kwargs"] == {"code_revision": NOMIC_CODE_REVISION}


def test_other_models_get_their_revision_and_no_remote_code(recorded_loads, monkeypatch) -> None:
    monkeypatch.setattr(encoder, "_bundled_minilm_path", lambda: None)
    encoder.load_model("BAAI/bge-small-en-v1.5@v1.0")
    encoder.load_model("all-MiniLM-L6-v2")
    (_, pinned), (_, unpinned) = recorded_loads
    assert (pinned["revision"], pinned["trust_remote_code"], pinned["model_kwargs"]) == ("v1.0", False, None)
    assert (unpinned["revision"], unpinned["trust_remote_code"]) == (None, False)


@pytest.mark.parametrize("name", ["nomic-embed-text-v1.5@main", "nomic-embed-text-v1.5@v1.5"])
def test_remote_code_on_a_branch_or_tag_is_refused(name: str, recorded_loads) -> None:
    with pytest.raises(EmbeddingError, match=r"runs code from the hub, so its revision must be a "
                                             r"40-hex commit") as caught:
        encoder.load_model(name)
    one_line(caught)
    assert recorded_loads == []


def test_remote_code_without_revision_is_refused(monkeypatch) -> None:
    unpinned = replace(get_model_spec("nomic-embed-text-v1.5"), revision=None)
    with pytest.raises(EmbeddingError, match=r"pin it: --model nomic-embed-text-v1.5@<40-hex commit>"):
        check_remote_code_pinned(unpinned)
    monkeypatch.setenv("VESPA_QUANT_MODEL_CODE_REVISION", "main")
    with pytest.raises(EmbeddingError, match=r"code revision must be a 40-hex commit, got 'main'"):
        check_remote_code_pinned(get_model_spec("nomic-embed-text-v1.5"))


# --- vectors from the model and the cache ---------------------------------------------------


class FakeModel:
    """Unit rows derived from the text; ``poison`` texts give NaN rows."""

    def __init__(self, dim: int, poison: str | None = None) -> None:
        self.dim, self.poison, self.calls = dim, poison, 0

    def encode(self, texts: list[str], prompt: str | None = None, **kwargs) -> np.ndarray:
        self.calls += 1
        rows = np.stack([np.random.default_rng(len(t) + 7 * i).standard_normal(self.dim)
                         for i, t in enumerate(texts)])
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        for i, text in enumerate(texts):
            if text == self.poison:
                rows[i, 0] = np.nan
        return rows.astype(np.float32)

    def get_sentence_embedding_dimension(self) -> int:
        return self.dim


@pytest.fixture
def fake_model(monkeypatch) -> FakeModel:
    model = FakeModel(384)
    monkeypatch.setattr(encoder, "load_model", lambda name, device=None: model)
    return model


def tiny_dataset() -> BeirDataset:
    return BeirDataset("tiny", Path("."), ["d1", "d2", "d3"], ["alpha", "beta", "gamma"],
                       ["q1", "q2"], ["first?", "second?"], {"q1": {"d1": 1}, "q2": {"d3": 1}},
                       "0" * 16)


def test_nan_from_the_model_is_rejected_with_row_and_id(tmp_path: Path, fake_model) -> None:
    fake_model.poison = "beta"
    with pytest.raises(EmbeddingError) as caught:
        embed_dataset(tiny_dataset(), "all-MiniLM-L6-v2", cache_dir=tmp_path, show_progress=False)
    assert one_line(caught) == "all-MiniLM-L6-v2 document vectors: row 1 (id 'd2') has NaN or infinite values"
    assert not list(tmp_path.rglob("*.npy"))  # nothing bad was cached


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, dim))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


BAD_ENTRIES = {
    "float64": (lambda v: v.astype(np.float64), "dtype float64, expected float32"),
    "width": (lambda v: v[:, :383], "383 dims, expected 384"),
    "rows": (lambda v: v[:2], r"shape \(2, 384\), expected 3 rows"),
    "nan": (lambda v: np.where(np.arange(384) == 5, np.float32(np.nan), v), "NaN or infinite values"),
    "not unit": (lambda v: v * np.float32(3), "rows that are not unit length"),
}


@pytest.mark.parametrize("damage", list(BAD_ENTRIES))
def test_bad_cache_entry_is_recomputed(damage: str, tmp_path: Path, fake_model, caplog) -> None:
    texts = ["one", "two", "three"]
    path = seed_cache("all-MiniLM-L6-v2", texts, "document", unit_rows(3, 384), tmp_path)
    assert np.array_equal(embed_texts("all-MiniLM-L6-v2", texts, "document", tmp_path), np.load(path))
    assert fake_model.calls == 0
    transform, reason = BAD_ENTRIES[damage]
    np.save(path, transform(np.load(path)))
    vectors = embed_texts("all-MiniLM-L6-v2", texts, "document", tmp_path, show_progress=False)
    assert fake_model.calls == 1 and vectors.shape == (3, 384)
    assert any(str(path) in r.getMessage() and "recomputing" in r.getMessage() for r in caplog.records)
    assert re.search(reason, caplog.text)
    np.testing.assert_array_equal(np.load(path), vectors)  # the entry was repaired


def test_bad_cache_entry_that_cannot_be_recomputed_names_the_file(tmp_path: Path, monkeypatch) -> None:
    path = cache_path("all-MiniLM-L6-v2", ["x"], "query", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an npy file")

    def no_model(name, device=None):
        raise EmbeddingError("cannot load embedding model (offline)")

    monkeypatch.setattr(encoder, "load_model", no_model)
    with pytest.raises(EmbeddingError) as caught:
        embed_texts("all-MiniLM-L6-v2", ["x"], "query", tmp_path, show_progress=False)
    message = one_line(caught)
    assert message.startswith(f"{path}: invalid cache entry (unreadable")
    assert message.endswith("recomputing it failed: cannot load embedding model (offline)")


def test_seed_cache_checks_rows(tmp_path: Path, caplog) -> None:
    vectors = unit_rows(3, 384)
    vectors[1, 3] = np.inf
    with pytest.raises(EmbeddingError, match=r"seeded query vectors: row 1 has NaN or infinite values"):
        seed_cache("all-MiniLM-L6-v2", ["a", "b", "c"], "query", vectors, tmp_path)
    vectors[1] = 0.0
    vectors[2] = 0.0
    with pytest.raises(EmbeddingError, match=r"row 1 is all zeros; 1 more such rows"):
        seed_cache("all-MiniLM-L6-v2", ["a", "b", "c"], "query", vectors, tmp_path)
    path = seed_cache("all-MiniLM-L6-v2", ["a"], "query", 2 * unit_rows(1, 384), tmp_path)
    assert "1 of 1 rows are not unit length" in caplog.text
    assert np.linalg.norm(np.load(path)) == pytest.approx(1.0, abs=1e-6)


# --- bring your own .npy / .ids -------------------------------------------------------------


@pytest.fixture
def byo(tmp_path: Path) -> Path:
    np.save(tmp_path / "v.npy", unit_rows(4, 8))
    (tmp_path / "v.ids").write_text("a\nb\nc\nd\n", encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(("row", "value", "problem"), [
    (2, np.nan, "has NaN or infinite values"),
    (2, 1e300, "has NaN or infinite values"),  # float64 beyond float32's range
    (1, 0.0, "is all zeros"),
])
def test_byo_bad_rows_name_file_row_and_id(byo: Path, row: int, value: float, problem: str) -> None:
    vectors = unit_rows(4, 8).astype(np.float64)
    vectors[row] = 0.0 if value == 0.0 else vectors[row]
    vectors[row, 0] = value
    np.save(byo / "v.npy", vectors)
    ids = "abcd"
    with pytest.raises(EmbeddingError) as caught:
        load_precomputed(byo / "v.npy", byo / "v.ids", ["d", ids[row], "a"])
    assert one_line(caught) == f"v.npy: row {row} (id {ids[row]!r}) {problem}"


def test_byo_unused_rows_are_not_checked(byo: Path) -> None:
    vectors = unit_rows(4, 8)
    vectors[3] = np.nan
    np.save(byo / "v.npy", vectors)
    assert load_precomputed(byo / "v.npy", byo / "v.ids", ["a", "b"]).shape == (2, 8)


def test_byo_ids_must_be_utf8(byo: Path) -> None:
    (byo / "v.ids").write_bytes(b"a\nb\n\xff\xfe\nd\n")
    with pytest.raises(EmbeddingError) as caught:
        load_precomputed(byo / "v.npy", byo / "v.ids", ["a"])
    assert one_line(caught) == ("v.ids line 3: not valid UTF-8 (byte 0xff at offset 4); "
                                "ids files must be UTF-8")


def test_byo_rows_are_normalised_with_a_warning(byo: Path, caplog) -> None:
    np.save(byo / "v.npy", 5 * unit_rows(4, 8))
    got = load_precomputed(byo / "v.npy", byo / "v.ids", ["b", "a"])
    np.testing.assert_allclose(got, unit_rows(4, 8)[[1, 0]], rtol=1e-6)
    assert "v.npy: 2 of 2 rows are not unit length (norms 5 to 5); normalising them" in caplog.text


def test_byo_wrong_width(byo: Path, tmp_path: Path, fake_model) -> None:
    dataset = tiny_dataset()
    np.save(byo / "d.npy", unit_rows(3, 8))
    (byo / "d.ids").write_text("d1\nd2\nd3\n")
    np.save(byo / "q.npy", unit_rows(2, 6))
    (byo / "q.ids").write_text("q1\nq2\n")
    with pytest.raises(EmbeddingError) as caught:  # registered model: its width is known
        embed_dataset(dataset, "all-MiniLM-L6-v2", cache_dir=tmp_path,
                      precomputed={"document": (byo / "d.npy", byo / "d.ids")})
    assert one_line(caught) == "d.npy: vectors have 8 dims, the model produces 384"
    with pytest.raises(EmbeddingError) as caught:  # any model: both sides must agree
        embed_dataset(dataset, "my-model", cache_dir=tmp_path,
                      precomputed={"document": (byo / "d.npy", byo / "d.ids"),
                                   "query": (byo / "q.npy", byo / "q.ids")})
    assert one_line(caught) == "d.npy have 8 dims but q.npy have 6"
