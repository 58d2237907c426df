"""LangChain on a Lockstep memory store (``pip install 'lockstep[langchain]'``).

:class:`LockstepVectorStore` is a LangChain ``VectorStore`` whose documents are facts of
one type: ``add_documents`` and ``delete`` are each one transaction over the storage and
every index (a batch lands whole or not at all, through crashes), and a search returns
committed, current versions only. It passes LangChain's standard vector-store tests
(``langchain-tests``). On an ``AsyncMemoryStore`` its async methods await the store.
:class:`LangChainEmbedder` lets a store's index embed with a LangChain ``Embeddings``
model.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

try:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.runnables.config import run_in_executor
    from langchain_core.vectorstores import VectorStore
except ImportError as missing:  # pragma: no cover - depends on the installation
    raise ImportError(
        "coordinator.integrations.langchain needs LangChain: pip install 'lockstep[langchain]'"
    ) from missing

from coordinator.errors import UsageError
from coordinator.integrations._loop import EventLoopBridge
from coordinator.memory._model import Fact, check_user_type

if TYPE_CHECKING:
    from collections.abc import Callable

    from coordinator.memory import AsyncMemoryStore, MemoryStore


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
    """LangChain's ``VectorStore`` over a memory store's facts of type ``type``.

    A document is a fact whose payload holds ``content`` (its text, which the indexes
    embed) and ``metadata``; its id is the fact's id. ``filter`` in the searches compares
    metadata fields for equality (``{"source": "faq"}``). Scores are the indexes' cosine
    similarities (higher is closer); relevance scores map them to 0..1.

    On a :class:`MemoryStore` the async methods run the sync ones in a worker thread, as
    LangChain's defaults do. On an :class:`AsyncMemoryStore` they await it; make the
    vector store inside the event loop that uses the memory store: its synchronous methods
    (a synchronous tool LangGraph runs in a worker thread) run on that loop and wait, and
    are refused on the loop's own thread, where waiting would stop the loop.
    """

    def __init__(self, store: MemoryStore | AsyncMemoryStore, *, type: str = "document") -> None:
        from coordinator.memory import AsyncMemoryStore, MemoryStore

        if isinstance(store, AsyncMemoryStore):
            self._bridge: EventLoopBridge | None = EventLoopBridge(
                "this LockstepVectorStore",
                "it is on an AsyncMemoryStore; await its async methods (aadd_documents, "
                "asimilarity_search...) on the loop, or give it a MemoryStore",
            )
        elif isinstance(store, MemoryStore):
            self._bridge = None
        else:
            raise UsageError(
                "LockstepVectorStore takes a MemoryStore or an AsyncMemoryStore, got "
                f"{store.__class__.__name__}"
            )
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
        return self.add_documents(_documents("add_texts", texts, metadatas), ids=ids, **kwargs)

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """:meth:`add_texts`, awaited."""
        documents = _documents("aadd_texts", texts, metadatas)
        return await self.aadd_documents(documents, ids=ids, **kwargs)

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        """Add (or replace, by id) the documents in one transaction; their ids.

        ``ids=`` names them (else each document's own ``id``, else a new UUID)."""
        if self._bridge is not None:
            return self._bridge.wait(self.aadd_documents(documents, **kwargs))
        store = self._sync_store()
        facts = self._facts_for("add_documents", documents, kwargs)
        with store.transaction() as tx:
            for fact in facts:
                self._check_replaceable("add_documents", fact.id, tx.get(fact.id))
                tx.commit(fact)
        return [fact.id for fact in facts]

    async def aadd_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        """:meth:`add_documents`, awaited."""
        if self._bridge is None:
            return await run_in_executor(None, self.add_documents, documents, **kwargs)
        store = self._async_store()
        facts = self._facts_for("aadd_documents", documents, kwargs)
        async with store.transaction() as tx:
            for fact in facts:
                self._check_replaceable("aadd_documents", fact.id, await tx.get(fact.id))
                await tx.commit(fact)
        return [fact.id for fact in facts]

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete the documents with these ids (unknown ones are skipped), in one
        transaction. ``delete()`` without ids is refused: it would mean every document."""
        if self._bridge is not None:
            return self._bridge.wait(self.adelete(ids, **kwargs))
        _check_delete("delete", ids, kwargs)
        store = self._sync_store()
        present = self._own(store.get_many(ids or []))
        with store.transaction() as tx:
            for fact_id in present:
                tx.delete(fact_id)
        return True

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """:meth:`delete`, awaited."""
        if self._bridge is None:
            return await run_in_executor(None, self.delete, ids, **kwargs)
        _check_delete("adelete", ids, kwargs)
        store = self._async_store()
        present = self._own(await store.get_many(ids or []))
        async with store.transaction() as tx:
            for fact_id in present:
                await tx.delete(fact_id)
        return True

    # -- reads --------------------------------------------------------------------------

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents with these ids that exist, in the order given."""
        if self._bridge is not None:
            return self._bridge.wait(self.aget_by_ids(ids))
        return [_document(fact) for fact in self._own(self._sync_store().get_many(ids)).values()]

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """:meth:`get_by_ids`, awaited."""
        if self._bridge is None:
            return await run_in_executor(None, self.get_by_ids, ids)
        found = self._own(await self._async_store().get_many(ids))
        return [_document(fact) for fact in found.values()]

    def similarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        found = await self.asimilarity_search_with_score(query, k, filter, **kwargs)
        return [doc for doc, _ in found]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """The ``k`` closest documents with their cosine similarity, best first."""
        if self._bridge is not None:
            return self._bridge.wait(self.asimilarity_search_with_score(query, k, filter, **kwargs))
        filters = _filters("similarity_search", filter, kwargs)
        hits = self._sync_store().search(query, k, self.type, filters)
        return [(_document(hit.fact), hit.score) for hit in hits]

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """:meth:`similarity_search_with_score`, awaited."""
        if self._bridge is None:
            return await run_in_executor(
                None, self.similarity_search_with_score, query, k, filter, **kwargs
            )
        filters = _filters("asimilarity_search", filter, kwargs)
        hits = await self._async_store().search(query, k, self.type, filters)
        return [(_document(hit.fact), hit.score) for hit in hits]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        # Cosine similarity, -1..1, to 0..1 (clamped: float32 vectors give 1.00000001).
        return lambda similarity: min(1.0, max(0.0, (similarity + 1.0) / 2.0))

    # -- shared by the sync and async methods -------------------------------------------

    def _sync_store(self) -> MemoryStore:
        return cast("MemoryStore", self.store)

    def _async_store(self) -> AsyncMemoryStore:
        return cast("AsyncMemoryStore", self.store)

    def _own(self, found: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """This store's documents among facts read by id (other types are not)."""
        return {fact_id: f for fact_id, f in found.items() if f["type"] == self.type}

    def _facts_for(
        self, method: str, documents: list[Document], kwargs: dict[str, Any]
    ) -> list[Fact]:
        """The facts that hold ``documents`` (checked before anything is written)."""
        ids = kwargs.pop("ids", None)
        if kwargs:
            raise UsageError(f"{method}(): unknown arguments {sorted(kwargs)}")
        if ids is not None and len(ids) != len(documents):
            raise UsageError(f"{method}(): {len(ids)} ids for {len(documents)} documents")
        return [
            Fact(
                id=(ids[i] if ids else None) or document.id or str(uuid.uuid4()),
                type=self.type,
                payload={"content": document.page_content, "metadata": dict(document.metadata)},
            )
            for i, document in enumerate(documents)
        ]

    def _check_replaceable(self, method: str, fact_id: str, held: dict[str, Any] | None) -> None:
        if held is not None and held["type"] != self.type:
            raise UsageError(
                f"{method}(): id {fact_id!r} is a {held['type']!r} fact, not a "
                f"{self.type!r} document; nothing was added"
            )

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
        vectors = cls._made_for("from_texts", embedding, kwargs)
        vectors.add_texts(texts, metadatas, ids=ids)
        return vectors

    @classmethod
    async def afrom_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> LockstepVectorStore:
        """:meth:`from_texts`, awaited (on either kind of memory store)."""
        vectors = cls._made_for("afrom_texts", embedding, kwargs)
        await vectors.aadd_texts(texts, metadatas, ids=ids)
        return vectors

    @classmethod
    def _made_for(
        cls, method: str, embedding: Embeddings, kwargs: dict[str, Any]
    ) -> LockstepVectorStore:
        store = kwargs.pop("store", None)
        if store is None:
            raise UsageError(f"{method}(): pass the memory store as store=")
        vectors = cls(store, **kwargs)
        if embedding is not None and vectors.embeddings is not embedding:
            raise UsageError(
                f"{method}(): the store's index does not embed with this model; give the "
                "index LangChainEmbedder(embedding, dim) or pass embedding=None"
            )
        return vectors


def _documents(
    method: str, texts: Iterable[str], metadatas: list[dict[str, Any]] | None
) -> list[Document]:
    texts = list(texts)
    if metadatas is not None and len(metadatas) != len(texts):
        raise UsageError(f"{method}(): {len(metadatas)} metadatas for {len(texts)} texts")
    return [
        Document(page_content=text, metadata=dict(metadatas[i]) if metadatas else {})
        for i, text in enumerate(texts)
    ]


def _check_delete(method: str, ids: list[str] | None, kwargs: dict[str, Any]) -> None:
    if ids is None:
        raise UsageError(f"{method}(): give the ids of the documents to delete")
    if kwargs:
        raise UsageError(f"{method}(): unknown arguments {sorted(kwargs)}")


def _filters(method: str, filter: dict[str, Any] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A search's metadata filter as the memory API's filters (unknown arguments refused)."""
    if kwargs:
        raise UsageError(f"{method}(): unknown arguments {sorted(kwargs)}")
    return {f"payload.metadata.{key}": value for key, value in (filter or {}).items()}


def _document(fact: dict[str, Any]) -> Document:
    payload = fact["payload"]
    return Document(
        page_content=payload.get("content", ""),
        metadata=dict(payload.get("metadata") or {}),
        id=fact["id"],
    )
