"""Registry of the embedding models the study compares, as data.

Each model's retrieval prompts are part of its definition: mxbai and nomic were trained with
asymmetric query/document prefixes and lose several nDCG points without them, so prompts live
here next to the hub id rather than at call sites. Any other sentence-transformers model can be
used by hub id; it gets a generic spec without prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TextKind = Literal["query", "document"]


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

    def prompt_for(self, kind: TextKind) -> str:
        """Prefix to prepend to texts of ``kind`` before encoding."""
        if kind == "query":
            return self.query_prompt
        if kind == "document":
            return self.document_prompt
        raise ValueError(f"text kind must be 'query' or 'document', got {kind!r}")

    @property
    def slug(self) -> str:
        """File-system-safe form of ``name`` (hub ids contain '/')."""
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
    """
    wanted = name.strip().lower()
    for spec in MODELS.values():
        if wanted in (spec.name.lower(), spec.hub_id.lower()):
            return spec
    return ModelSpec(name=name.strip(), hub_id=name.strip(), dim=None)
