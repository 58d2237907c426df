"""LangChain on a Lockstep memory store (``pip install 'lockstep[langchain]'``).

:class:`LockstepVectorStore` is a LangChain ``VectorStore`` whose documents are facts of
one type: ``add_documents`` and ``delete`` are each one transaction over the storage and
every index (a batch lands whole or not at all, through crashes), and a search returns
committed, current versions only. It passes LangChain's standard vector-store tests
(``langchain-tests``). :class:`LangChainEmbedder` lets a store's index embed with a
LangChain ``Embeddings`` model.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

try:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import VectorStore
except ImportError as missing:  # pragma: no cover - depends on the installation
    raise ImportError(
        "coordinator.integrations.langchain needs LangChain: pip install 'lockstep[langchain]'"
    ) from missing

from coordinator.errors import UsageError
from coordinator.integrations import check_store
from coordinator.memory._model import Fact, check_user_type

if TYPE_CHECKING:
    from collections.abc import Callable

    from coordinator.memory import MemoryStore


class LangChainEmbedder:
    """A LangChain ``Embeddings`` model as a Lockstep embedder (for an index).

    :param dim: the model's vector size (an index checks it against its collection).
    :param name: the model's name, recorded by the collections the index creates, so a
        collection is never searched with another model's vectors.
    """

    def __init__(self, embeddings: Embeddings, dim: int, *, name: str | None = None) -> None:
        self.embeddings = embeddings
        self.dim = dim
        self.name = name

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self.embeddings.embed_documents(list(texts))

    def embed_query(self, text: str) -> list[float]:
        return self.embeddings.embed_query(text)


class LockstepVectorStore(VectorStore):
    """LangChain's ``VectorStore`` over a :class:`MemoryStore`'s facts of type ``type``.

    A document is a fact whose payload holds ``content`` (its text, which the indexes
    embed) and ``metadata``; its id is the fact's id. ``filter`` in the searches compares
    metadata fields for equality (``{"source": "faq"}``). Scores are the indexes' cosine
    similarities (higher is closer); relevance scores map them to 0..1.
    """

    def __init__(self, store: MemoryStore, *, type: str = "document") -> None:
        from coordinator.memory import MemoryStore

        check_store("LockstepVectorStore", store, MemoryStore)
        check_user_type("type", type)
        if not store.indexes:
            raise UsageError("a vector store needs a memory store with at least one index")
        self.store = store
        self.type = type

    @property
    def embeddings(self) -> Embeddings | None:
        """The LangChain model the first index embeds with, when it is one."""
        embedder = self.store.indexes[0].embedder
        return embedder.embeddings if isinstance(embedder, LangChainEmbedder) else None

    # -- writes -------------------------------------------------------------------------

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Add (or replace, by id) the texts in one transaction; their ids."""
        documents = [
            Document(page_content=text, metadata=dict(metadatas[i]) if metadatas else {})
            for i, text in enumerate(texts)
        ]
        return self.add_documents(documents, ids=ids, **kwargs)

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        """Add (or replace, by id) the documents in one transaction; their ids.

        ``ids=`` names them (else each document's own ``id``, else a new UUID)."""
        ids = kwargs.pop("ids", None)
        if kwargs:
            raise UsageError(f"add_documents(): unknown arguments {sorted(kwargs)}")
        if ids is not None and len(ids) != len(documents):
            raise UsageError(f"add_documents(): {len(ids)} ids for {len(documents)} documents")
        written = []
        with self.store.transaction() as tx:
            for i, document in enumerate(documents):
                fact_id = (ids[i] if ids else None) or document.id or str(uuid.uuid4())
                held = tx.get(fact_id)
                if held is not None and held["type"] != self.type:
                    raise UsageError(
                        f"add_documents(): id {fact_id!r} is a {held['type']!r} fact, not a "
                        f"{self.type!r} document; nothing was added"
                    )
                payload = {"content": document.page_content, "metadata": dict(document.metadata)}
                written.append(tx.commit(Fact(id=fact_id, type=self.type, payload=payload)))
        return written

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete the documents with these ids (unknown ones are skipped), in one
        transaction. ``delete()`` without ids is refused: it would mean every document."""
        if ids is None:
            raise UsageError("delete(): give the ids of the documents to delete")
        if kwargs:
            raise UsageError(f"delete(): unknown arguments {sorted(kwargs)}")
        present = self._facts(ids)
        with self.store.transaction() as tx:
            for fact_id in present:
                tx.delete(fact_id)
        return True

    # -- reads --------------------------------------------------------------------------

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents with these ids that exist, in the order given."""
        return [_document(fact) for fact in self._facts(ids).values()]

    def similarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """The ``k`` closest documents with their cosine similarity, best first."""
        if kwargs:
            raise UsageError(f"similarity_search(): unknown arguments {sorted(kwargs)}")
        filters = {f"payload.metadata.{key}": value for key, value in (filter or {}).items()}
        hits = self.store.search(query, k, self.type, filters)
        return [(_document(hit.fact), hit.score) for hit in hits]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        # Cosine similarity, -1..1, to 0..1 (clamped: float32 vectors give 1.00000001).
        return lambda similarity: min(1.0, max(0.0, (similarity + 1.0) / 2.0))

    def _facts(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """This store's documents among ``ids``, by id, in the order given (one read)."""
        found = self.store.get_many(ids)
        return {fact_id: f for fact_id, f in found.items() if f["type"] == self.type}

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> LockstepVectorStore:
        """A vector store on ``store=`` (required) holding ``texts``.

        ``embedding`` must be the model the store's first index embeds with (through a
        :class:`LangChainEmbedder`): the index embeds, so another model would be ignored.
        """
        store = kwargs.pop("store", None)
        if store is None:
            raise UsageError("from_texts(): pass the memory store as store=")
        vectors = cls(store, **kwargs)
        if embedding is not None and vectors.embeddings is not embedding:
            raise UsageError(
                "from_texts(): the store's index does not embed with this model; give the "
                "index LangChainEmbedder(embedding, dim) or pass embedding=None"
            )
        vectors.add_texts(texts, metadatas, ids=ids)
        return vectors


def _document(fact: dict[str, Any]) -> Document:
    payload = fact["payload"]
    return Document(
        page_content=payload.get("content", ""),
        metadata=dict(payload.get("metadata") or {}),
        id=fact["id"],
    )
