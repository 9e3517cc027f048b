"""Model registry, embedding cache, precomputed import, Matryoshka truncation, real MiniLM."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from vespa_quant.data.beir import BeirDataset
from vespa_quant.embed import encoder
from vespa_quant.embed.cache import (
    cache_path,
    embed_dataset,
    embed_texts,
    load_precomputed,
    seed_cache,
    truncate_matryoshka,
)
from vespa_quant.embed.models import get_model_spec
from vespa_quant.errors import EmbeddingError

DIM = 8


class FakeModel:
    """Deterministic stand-in for SentenceTransformer: vector depends on prompt + text."""

    def __init__(self, dim: int = DIM) -> None:
        self.dim = dim
        self.encoded: list[list[str]] = []

    def encode(self, texts: list[str], prompt: str | None = None, **kwargs) -> np.ndarray:
        self.encoded.append([(prompt or "") + t for t in texts])
        rows = []
        for text in texts:
            seed = zlib.crc32(((prompt or "") + text).encode())
            rows.append(np.random.default_rng(seed).standard_normal(self.dim))
        vectors = np.asarray(rows, dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def get_sentence_embedding_dimension(self) -> int:
        return self.dim


@pytest.fixture
def fake_loader(monkeypatch):
    """Replace model loading with a FakeModel and count the loads."""
    loads: list[str] = []
    model = FakeModel()

    def load_model(name: str, device: str | None = None) -> FakeModel:
        loads.append(name)
        return model

    monkeypatch.setattr(encoder, "load_model", load_model)
    return loads, model


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def tiny_dataset() -> BeirDataset:
    return BeirDataset(
        name="tiny",
        path=Path("."),
        doc_ids=["d1", "d2", "d3"],
        doc_texts=["alpha", "beta", "gamma"],
        query_ids=["q1", "q2"],
        query_texts=["first?", "second?"],
        qrels={"q1": {"d1": 1}, "q2": {"d3": 1}},
        fingerprint="0" * 16,
    )


# --- registry -------------------------------------------------------------------------------


def test_registry_accepts_short_name_and_hub_id() -> None:
    mxbai = get_model_spec("mxbai-embed-large-v1")
    assert get_model_spec("mixedbread-ai/mxbai-embed-large-v1") is mxbai
    assert mxbai.dim == 1024
    assert mxbai.prompt_for("query").startswith("Represent this sentence")
    assert mxbai.prompt_for("document") == ""

    nomic = get_model_spec("nomic-ai/nomic-embed-text-v1.5")
    assert (nomic.dim, nomic.trust_remote_code) == (768, True)
    assert (nomic.query_prompt, nomic.document_prompt) == ("search_query: ", "search_document: ")
    assert 768 in nomic.matryoshka_dims

    minilm = get_model_spec("sentence-transformers/all-MiniLM-L6-v2")
    assert minilm.name == "all-MiniLM-L6-v2" and minilm.dim == 384
    assert get_model_spec("ALL-MINILM-L6-V2") is minilm


def test_unknown_model_gets_generic_spec() -> None:
    spec = get_model_spec("BAAI/bge-small-en-v1.5")
    assert (spec.name, spec.hub_id, spec.dim) == ("BAAI/bge-small-en-v1.5",) * 2 + (None,)
    assert spec.query_prompt == spec.document_prompt == ""
    assert spec.slug == "BAAI__bge-small-en-v1.5"


# --- cache ----------------------------------------------------------------------------------


def test_cache_hit_does_not_load_model(tmp_path: Path, fake_loader) -> None:
    loads, model = fake_loader
    texts = ["one", "two", "three"]
    first = embed_texts("my-model", texts, "document", cache_dir=tmp_path, show_progress=False)
    second = embed_texts("my-model", texts, "document", cache_dir=tmp_path, show_progress=False)
    assert loads == ["my-model"]
    assert len(model.encoded) == 1
    assert first.dtype == np.float32 and first.shape == (3, DIM)
    np.testing.assert_array_equal(first, second)
    assert [p.name for p in (tmp_path / "my-model").iterdir()] == [
        cache_path("my-model", texts, "document", tmp_path).name
    ]


def test_cache_key_depends_on_texts_kind_prompt_and_model(tmp_path: Path) -> None:
    base = cache_path("all-MiniLM-L6-v2", ["a", "b"], "query", tmp_path)
    assert base.parent == tmp_path / "all-MiniLM-L6-v2"
    assert base.name.startswith("query-") and len(base.stem) == len("query-") + 16
    hub_id = "sentence-transformers/all-MiniLM-L6-v2"
    assert cache_path(hub_id, ["a", "b"], "query", tmp_path) == base
    assert cache_path("all-MiniLM-L6-v2", ["b", "a"], "query", tmp_path) != base
    assert cache_path("all-MiniLM-L6-v2", ["a\x00b"], "query", tmp_path) != base
    document = cache_path("all-MiniLM-L6-v2", ["a", "b"], "document", tmp_path)
    assert document.stem.removeprefix("document-") != base.stem.removeprefix("query-")
    # nomic's query and document prompts differ, so the same texts get different keys.
    nomic_q = cache_path("nomic-embed-text-v1.5", ["a"], "query", tmp_path).stem.split("-")[1]
    nomic_d = cache_path("nomic-embed-text-v1.5", ["a"], "document", tmp_path).stem.split("-")[1]
    assert nomic_q != nomic_d


def test_cache_dir_from_env(tmp_path: Path, monkeypatch, fake_loader) -> None:
    monkeypatch.setenv("VESPA_QUANT_CACHE", str(tmp_path))
    embed_texts("my-model", ["x"], "query", show_progress=False)
    assert len(list((tmp_path / "my-model").glob("query-*.npy"))) == 1
    assert not list(tmp_path.rglob("*.tmp"))


def test_prompt_is_applied_per_kind(tmp_path: Path, fake_loader) -> None:
    _, model = fake_loader
    model.dim = 768
    embed_texts("nomic-embed-text-v1.5", ["x"], "query", tmp_path, show_progress=False)
    embed_texts("nomic-embed-text-v1.5", ["x"], "document", tmp_path, show_progress=False)
    assert model.encoded == [["search_query: x"], ["search_document: x"]]


def test_corrupt_cache_file_is_recomputed(tmp_path: Path, fake_loader) -> None:
    loads, _ = fake_loader
    path = cache_path("my-model", ["x"], "query", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an npy file")
    vectors = embed_texts("my-model", ["x"], "query", tmp_path, show_progress=False)
    assert vectors.shape == (1, DIM) and loads == ["my-model"]
    assert np.load(path).shape == (1, DIM)


def test_embed_dataset_loads_model_once_then_uses_cache(tmp_path: Path, fake_loader) -> None:
    loads, _ = fake_loader
    dataset = tiny_dataset()
    docs, queries = embed_dataset(dataset, "my-model", cache_dir=tmp_path)
    assert docs.shape == (3, DIM) and queries.shape == (2, DIM)
    assert loads == ["my-model"]
    again = embed_dataset(dataset, "my-model", cache_dir=tmp_path)
    assert loads == ["my-model"]
    np.testing.assert_array_equal(again[0], docs)
    np.testing.assert_array_equal(again[1], queries)


def test_seed_cache_then_embed_dataset_skips_model(tmp_path: Path, fake_loader) -> None:
    loads, _ = fake_loader
    dataset = tiny_dataset()
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((3, 384)).astype(np.float32)
    queries = rng.standard_normal((2, 384)).astype(np.float32)
    seed_cache("all-MiniLM-L6-v2", dataset.doc_texts, "document", docs, tmp_path)
    seed_cache("all-MiniLM-L6-v2", dataset.query_texts, "query", queries, tmp_path)
    got_docs, got_queries = embed_dataset(dataset, "all-MiniLM-L6-v2", cache_dir=tmp_path)
    assert loads == []
    # Seeded rows are stored unit length (every method assumes cosine), direction unchanged.
    np.testing.assert_allclose(got_docs, unit(docs), rtol=1e-6)
    np.testing.assert_allclose(got_queries, unit(queries), rtol=1e-6)
    with pytest.raises(EmbeddingError, match="have 768 dims, all-MiniLM-L6-v2 produces 384"):
        seed_cache("all-MiniLM-L6-v2", ["a"], "query", np.zeros((1, 768)), tmp_path)
    with pytest.raises(EmbeddingError, match="expected 2 rows"):
        seed_cache("all-MiniLM-L6-v2", ["a", "b"], "query", np.zeros((1, 384)), tmp_path)


# --- Matryoshka -----------------------------------------------------------------------------


def test_truncate_matryoshka_renormalises_and_keeps_zero_rows() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((5, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[2, :4] = 0.0  # zero after truncation to 4 dims
    truncated = truncate_matryoshka(vectors, 4)
    assert truncated.shape == (5, 4) and truncated.dtype == np.float32
    norms = np.linalg.norm(truncated, axis=1)
    np.testing.assert_allclose(np.delete(norms, 2), 1.0, rtol=1e-6)
    assert norms[2] == 0.0 and np.isfinite(truncated).all()
    # Direction of the kept prefix is unchanged, and the input is not modified.
    np.testing.assert_allclose(
        truncated[0], vectors[0, :4] / np.linalg.norm(vectors[0, :4]), rtol=1e-6
    )
    assert np.linalg.norm(vectors[0]) == pytest.approx(1.0, rel=1e-6)
    full = truncate_matryoshka(vectors, 16)
    np.testing.assert_allclose(np.delete(full, 2, axis=0), np.delete(vectors, 2, axis=0), atol=1e-6)


@pytest.mark.parametrize("k", [0, 17])
def test_truncate_matryoshka_rejects_bad_k(k: int) -> None:
    with pytest.raises(EmbeddingError, match=f"cannot truncate 16-dim vectors to {k} dims"):
        truncate_matryoshka(np.ones((2, 16)), k)


# --- precomputed ----------------------------------------------------------------------------


@pytest.fixture
def precomputed_files(tmp_path: Path) -> tuple[Path, np.ndarray]:
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / "v.npy", vectors)
    (tmp_path / "ids.json").write_text(json.dumps(["a", "b", "c", "d"]))
    (tmp_path / "ids.txt").write_text("a\nb\nc\nd\n")
    return tmp_path, vectors


@pytest.mark.parametrize("ids_name", ["ids.json", "ids.txt"])
def test_load_precomputed_reorders_and_subsets(precomputed_files, ids_name: str) -> None:
    folder, vectors = precomputed_files
    got = load_precomputed(folder / "v.npy", folder / ids_name, ["c", "a"])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, unit(vectors[[2, 0]]), rtol=1e-6)


def test_load_precomputed_errors(precomputed_files) -> None:
    folder, _ = precomputed_files
    with pytest.raises(EmbeddingError, match=r"ids.json: no embedding for id 'zz' \(and 1 more\)"):
        load_precomputed(folder / "v.npy", folder / "ids.json", ["a", "zz", "yy"])

    (folder / "short.txt").write_text("a\nb\nc\n")
    with pytest.raises(EmbeddingError, match="v.npy has 4 rows but short.txt lists 3 ids"):
        load_precomputed(folder / "v.npy", folder / "short.txt", ["a"])

    np.save(folder / "flat.npy", np.zeros(4, dtype=np.float32))
    with pytest.raises(EmbeddingError, match=r"flat.npy: expected a 2-D array .* shape \(4,\)"):
        load_precomputed(folder / "flat.npy", folder / "ids.txt", ["a"])

    (folder / "dup.txt").write_text("a\nb\na\nd\n")
    with pytest.raises(EmbeddingError, match="dup.txt: duplicate id 'a'"):
        load_precomputed(folder / "v.npy", folder / "dup.txt", ["a"])

    with pytest.raises(EmbeddingError, match="missing.npy: file not found"):
        load_precomputed(folder / "missing.npy", folder / "ids.txt", ["a"])


def test_embed_dataset_with_precomputed(tmp_path: Path, fake_loader) -> None:
    loads, _ = fake_loader
    dataset = tiny_dataset()
    doc_vectors = np.eye(DIM, dtype=np.float32)[:3]
    np.save(tmp_path / "d.npy", doc_vectors[::-1])
    (tmp_path / "d_ids.json").write_text(json.dumps(["d3", "d2", "d1"]))
    docs, queries = embed_dataset(
        dataset, "my-model", cache_dir=tmp_path / "cache",
        precomputed={"document": (tmp_path / "d.npy", tmp_path / "d_ids.json")},
    )
    np.testing.assert_array_equal(docs, doc_vectors)
    assert queries.shape == (2, DIM) and loads == ["my-model"]  # queries still embedded
    with pytest.raises(EmbeddingError, match="precomputed keys"):
        embed_dataset(dataset, "my-model", precomputed={"docs": ("x", "y")})


# --- real model -----------------------------------------------------------------------------


@pytest.mark.slow  # loads torch and the model: ~4 s
def test_bundled_minilm_embeds_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = encoder.load_model("all-MiniLM-L6-v2", device="cpu")
    vectors = encoder.encode(
        model, ["a cat sits on the mat", "a kitten on a rug", "tax law"], "", show_progress=False
    )
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2]


@pytest.mark.slow  # imports sentence-transformers and torch: ~5 s
def test_unavailable_hub_model_suggests_precomputed(monkeypatch) -> None:
    import sentence_transformers

    def unreachable_hub(name_or_path: str, **kwargs):
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load {name_or_path}")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", unreachable_hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        EmbeddingError,
        match=r"'nomic-ai/nomic-embed-text-v1.5' at revision b0753ae7\w{32} "
        r"\(HF_HUB_OFFLINE is set\)"
        r".*couldn't connect.*precomputed",
    ):
        encoder.load_model("nomic-embed-text-v1.5")
