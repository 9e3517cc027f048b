"""Registry of the embedding models the study compares, as data.

Each model's retrieval prompts are part of its definition: mxbai and nomic were trained with
asymmetric query/document prefixes and lose several nDCG points without them, so prompts live
here next to the hub id rather than at call sites. Any other sentence-transformers model can be
used by hub id; it gets a generic spec without prompts.

A model that runs code from the hub (``trust_remote_code``) is pinned to a commit, for its
weights (``revision``) and for the repository its code comes from (``code_revision``: nomic's
config sends transformers to ``nomic-ai/nomic-bert-2048``, whose ``main`` would otherwise be
executed as it is on the day). ``NAME@COMMIT`` chooses another revision; the embedding cache
keys on it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Literal

from vespa_quant.errors import EmbeddingError

TextKind = Literal["query", "document"]

CODE_REVISION_ENV = "VESPA_QUANT_MODEL_CODE_REVISION"
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class ModelSpec:
    """What the pipeline needs to know about an embedding model.

    ``dim`` is None for unregistered models (known only after loading). ``matryoshka_dims`` lists
    the truncation sizes the model was trained for (Kusupati et al., 2022); an empty tuple means
    truncation is not expected to work well.
    """

    name: str
    hub_id: str
    dim: int | None
    query_prompt: str = ""
    document_prompt: str = ""
    matryoshka_dims: tuple[int, ...] = ()
    trust_remote_code: bool = False
    revision: str | None = None
    code_revision: str | None = None

    def prompt_for(self, kind: TextKind) -> str:
        """Prefix to prepend to texts of ``kind`` before encoding."""
        if kind == "query":
            return self.query_prompt
        if kind == "document":
            return self.document_prompt
        raise ValueError(f"text kind must be 'query' or 'document', got {kind!r}")

    @property
    def slug(self) -> str:
        """One folder name for ``name`` (hub ids contain '/'); never a path out of the cache.

        Checked here as well as in :func:`get_model_spec` because a spec can be built directly.
        """
        if not MODEL_NAME.fullmatch(self.name):
            raise EmbeddingError(_bad_name(self.name))
        return self.name.replace("/", "__")


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="mxbai-embed-large-v1",
            hub_id="mixedbread-ai/mxbai-embed-large-v1",
            dim=1024,
            query_prompt="Represent this sentence for searching relevant passages: ",
            document_prompt="",
            matryoshka_dims=(1024, 512, 256, 128),
        ),
        ModelSpec(
            name="nomic-embed-text-v1.5",
            hub_id="nomic-ai/nomic-embed-text-v1.5",
            dim=768,
            query_prompt="search_query: ",
            document_prompt="search_document: ",
            matryoshka_dims=(768, 512, 256, 128, 64),
            trust_remote_code=True,
            # The revision MTEB evaluates (embeddings-benchmark/mteb, mteb/models/nomic_models.py).
            revision="b0753ae76394dd36bcfb912a46018088bca48be0",
            # nomic-ai/nomic-bert-2048, which holds the modelling code; a commit pinned in
            # public evaluation notes for nomic's models (not verifiable offline here).
            code_revision="7710840340a098cfb869c4f65e87cf2b1b70caca",
        ),
        ModelSpec(
            name="all-MiniLM-L6-v2",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            dim=384,
            query_prompt="",
            document_prompt="",
            matryoshka_dims=(384,),
        ),
    )
}


def get_model_spec(name: str) -> ModelSpec:
    """Spec for a registered short name or hub id; a generic spec for any other model id.

    Matching is case-insensitive so ``all-minilm-l6-v2`` and the hub id share one cache entry.
    ``name@revision`` overrides the revision; ``$VESPA_QUANT_MODEL_CODE_REVISION`` overrides the
    code revision of a model that runs hub code. Names are hub ids (``name`` or ``org/name``):
    anything else (``..``, ``/abs``, ``a/../../b``) is rejected before it can become a path.
    """
    base, _, revision = name.strip().partition("@")
    if not MODEL_NAME.fullmatch(base):
        raise EmbeddingError(_bad_name(base))
    if revision and not REVISION.fullmatch(revision):
        raise EmbeddingError(f"model {base!r}: revision {revision!r} is not a branch, tag or commit")
    spec = next(
        (s for s in MODELS.values() if base.lower() in (s.name.lower(), s.hub_id.lower())),
        None,
    ) or ModelSpec(name=base, hub_id=base, dim=None)
    if revision:
        spec = replace(spec, revision=revision)
    code_revision = os.environ.get(CODE_REVISION_ENV)
    if code_revision and spec.trust_remote_code:
        spec = replace(spec, code_revision=code_revision)
    return spec


def check_remote_code_pinned(spec: ModelSpec) -> None:
    """A model that runs hub code must name commits: a branch can move under the same name."""
    if not spec.trust_remote_code:
        return
    for what, value in (("revision", spec.revision), ("code revision", spec.code_revision)):
        if value is not None and not COMMIT.fullmatch(value):
            raise EmbeddingError(
                f"{spec.hub_id} runs code from the hub, so its {what} must be a 40-hex commit, "
                f"got {value!r}"
            )
    if spec.revision is None:
        raise EmbeddingError(
            f"{spec.hub_id} runs code from the hub; pin it: --model {spec.name}@<40-hex commit>"
        )


def _bad_name(name: str) -> str:
    return (
        f"model name {name!r}: expected a hub id such as 'all-MiniLM-L6-v2' or "
        "'org/name' (letters, digits, '.', '_', '-'; no '..', no absolute path)"
    )
