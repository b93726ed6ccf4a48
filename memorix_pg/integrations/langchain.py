"""LangChain: a memorix-pg collection as a ``VectorStore``, and memorix's embedders as ``Embeddings``.

Needs the ``langchain`` extra (``pip install 'memorix-pg[langchain]'``); nothing else in the package
imports LangChain.

:class:`MemorixVectorStore` embeds with the LangChain ``Embeddings`` it is given and hands the
vectors to memorix (``store_batch(..., embeddings=)``, ``retrieve(None, embedding=)``), so the
collection holds exactly the vectors LangChain computed. The ``Embeddings`` is wrapped as a memorix
embedder (:class:`LangChainEmbedder`) so that the collection records its name and dimensions, and
opening it later with another model is ``EmbedderMismatch``. Sync methods run on ``MemoryAPI``; the
``a``-prefixed ones on ``AsyncMemoryAPI`` (one per event loop, since asyncio connections belong
to one loop), not in threads.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore, VectorStoreRetriever

from ..aio import AsyncMemoryAPI
from ..api import MemoryAPI
from ..embedders import Embedder, resolve_embedder
from ..errors import InvalidInput
from ..memory import Memory
from ..validation import check_text

__all__ = [
    "LangChainEmbedder",
    "MemorixEmbeddings",
    "MemorixRetriever",
    "MemorixVectorStore",
    "relevance_from_distance",
]

PROBE_TEXT = "memorix-pg dimension probe"
# Keyword arguments of the search methods that go to ``retrieve`` as they are.
_SEARCH_OPTIONS = ("exact", "ef_search", "mode", "rrf_k", "vector_weight", "text_weight", "text_cutoff")

Vectors = npt.NDArray[np.float32]


class MemorixEmbeddings(Embeddings):
    """A memorix embedder as LangChain ``Embeddings``: by default all-MiniLM-L6-v2, loaded offline.

    ``embedder`` takes what ``MemoryAPI(embedder=)`` takes. A store given these embeddings records
    the memorix embedder's name, so ``MemoryAPI(embedder=...)`` opens the same collection.
    """

    def __init__(self, embedder: str | Embedder = "sentence-transformers") -> None:
        self.embedder = resolve_embedder(embedder)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = np.asarray(self.embedder.embed(list(texts)), dtype=np.float32).tolist()
        return vectors

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]

    # The model runs on the CPU in this process: a thread keeps the event loop free.
    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)


def _default_name(embeddings: Embeddings) -> str:
    names = (getattr(embeddings, attr, None) for attr in ("model", "model_name"))
    model = next((name for name in names if isinstance(name, str)), None)
    return f"langchain/{type(embeddings).__name__}" + (f"/{model}" if model else "")


class LangChainEmbedder:
    """LangChain ``Embeddings`` as a memorix embedder (``name``, ``dim``, ``embed``).

    The name is ``langchain/<class>[/<model>]`` unless given (a :class:`MemorixEmbeddings` keeps
    its memorix embedder's name). The dimension is learnt from the first vectors embedded, or by
    embedding one probe text when it is needed before that.
    """

    def __init__(self, embeddings: Embeddings, name: str | None = None) -> None:
        if not isinstance(embeddings, Embeddings):
            raise InvalidInput(f"embedding must be a LangChain Embeddings, got {type(embeddings).__name__}")
        self.embeddings = embeddings
        inner = embeddings.embedder if isinstance(embeddings, MemorixEmbeddings) else None
        self._name = name or (inner.name if inner is not None else _default_name(embeddings))
        self._inner = inner
        self._dim: int | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        if self._dim is None:
            if self._inner is not None:
                self._dim = self._inner.dim
            else:
                self.learn(self.embeddings.embed_query(PROBE_TEXT))
        assert self._dim is not None
        return self._dim

    async def adim(self) -> int:
        """``dim`` without blocking the event loop: probing with ``aembed_query``, or asking a
        memorix embedder (which may load its model to know) in a thread."""
        if self._dim is None:
            inner = self._inner
            if inner is None:
                self.learn(await self.embeddings.aembed_query(PROBE_TEXT))
            else:
                self._dim = await asyncio.to_thread(lambda: inner.dim)
        return self.dim

    def learn(self, vector: Sequence[float]) -> None:
        """Take the dimension from a vector the embeddings returned (first one wins)."""
        if self._dim is None:
            self._dim = len(vector)

    def embed(self, texts: Sequence[str]) -> Vectors:
        vectors = self.embeddings.embed_documents(list(texts))
        if vectors:
            self.learn(vectors[0])
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)


def relevance_from_distance(distance: str) -> Callable[[float], float]:
    """Distance (as ``similarity_search_with_score`` reports it) to a relevance score in [0, 1].

    The relevance is the cosine similarity, clipped to [0, 1], whatever the collection's distance:
    ``1 - d`` for cosine, ``1 - d**2 / 2`` for l2 and ``-d`` (the inner product) for ip. For l2
    and ip this holds for unit-length vectors (what most embedding models return); longer vectors
    are clipped.
    """
    cosine: Callable[[float], float]
    if distance == "cosine":
        cosine = lambda d: 1.0 - d  # noqa: E731
    elif distance == "l2":
        cosine = lambda d: 1.0 - d * d / 2.0  # noqa: E731
    elif distance == "ip":
        cosine = lambda d: -d  # noqa: E731
    else:
        raise InvalidInput(f"distance {distance!r} is not one of 'cosine', 'l2', 'ip'")
    return lambda d: min(1.0, max(0.0, cosine(d)))


def _distance(distance: str, memory: Memory) -> float:
    """pgvector's distance back from ``Memory.score``: cosine distance, L2 distance, or minus the
    inner product (lower is closer in each)."""
    assert memory.score is not None
    return 1.0 - memory.score if distance == "cosine" else -memory.score


def _document(memory: Memory) -> Document:
    return Document(id=memory.id, page_content=memory.text, metadata=memory.metadata)


def _search_options(kwargs: Mapping[str, Any], method: str) -> dict[str, Any]:
    unknown = sorted(set(kwargs) - set(_SEARCH_OPTIONS))
    if unknown:
        raise TypeError(
            f"{method}() got unexpected keyword arguments {', '.join(map(repr, unknown))}; "
            f"it takes k, filter, {', '.join(_SEARCH_OPTIONS)}"
        )
    return dict(kwargs)


def _check_mmr(k: int, fetch_k: int, lambda_mult: float) -> int:
    """How many candidates to fetch: ``fetch_k``, and at least ``k``."""
    for name, value in (("k", k), ("fetch_k", fetch_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInput(f"{name} must be an int >= 1, got {value!r}")
    if isinstance(lambda_mult, bool) or not isinstance(lambda_mult, int | float) or not 0 <= lambda_mult <= 1:
        raise InvalidInput(f"lambda_mult must be a number in [0, 1], got {lambda_mult!r}")
    return max(fetch_k, k)


class MemorixVectorStore(VectorStore):
    """A memorix-pg collection as a LangChain ``VectorStore``.

    ``options`` go to ``MemoryAPI`` / ``AsyncMemoryAPI``: ``distance`` (cosine, l2, ip; fixed
    when the collection is created), ``precision``, ``tenant``, ``encryption_key``, the pool
    options... ``pool=`` is used by the sync methods and ``async_pool=`` by the async ones. The
    constructor opens (or creates) the collection; ``await MemorixVectorStore.acreate(...)`` does
    the same without blocking an event loop.

    Ids are kept as given (``ids=`` or ``Document.id``) and upserted; the others get a UUID.
    ``filter=`` takes memorix's MongoDB-style filters over the metadata. Metadata comes back as
    stored: JSON, so tuples come back as lists and datetimes as ISO strings.
    """

    def __init__(
        self,
        embedding: Embeddings,
        collection_name: str = "langchain",
        database_url: str | None = None,
        **options: Any,
    ) -> None:
        self._setup(embedding, collection_name, database_url, options)
        self._sync_api()

    def _setup(
        self, embedding: Embeddings, collection_name: str, database_url: str | None, options: dict[str, Any]
    ) -> None:
        self._embedding = embedding
        self._embedder = LangChainEmbedder(embedding)
        self._pool = options.pop("pool", None)
        self._async_pool = options.pop("async_pool", None)
        self._arguments: dict[str, Any] = {
            "embedder": self._embedder,
            "collection_name": collection_name,
            "database_url": database_url,
            **options,
        }
        self._collection_name = collection_name
        self._memory: MemoryAPI | None = None
        self._amemories: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncMemoryAPI] = (
            weakref.WeakKeyDictionary()
        )
        self._distance: str | None = None

    @classmethod
    async def acreate(
        cls,
        embedding: Embeddings,
        collection_name: str = "langchain",
        database_url: str | None = None,
        **options: Any,
    ) -> Self:
        """The store, with its collection opened on the running event loop (no blocking call)."""
        store = cls.__new__(cls)
        store._setup(embedding, collection_name, database_url, options)
        await store._async_api()
        return store

    # -- the memorix objects ------------------------------------------------------------------

    def _sync_api(self) -> MemoryAPI:
        if self._memory is None:
            self._memory = MemoryAPI(**self._arguments, pool=self._pool)
            self._distance = self._memory.distance
        return self._memory

    async def _async_api(self) -> AsyncMemoryAPI:
        loop = asyncio.get_running_loop()
        api = self._amemories.get(loop)
        if api is None:
            await self._embedder.adim()  # the collection records it; never a sync probe on the loop
            api = AsyncMemoryAPI(**self._arguments, pool=self._async_pool)
            await api.open()
            self._distance = api.distance
            self._amemories[loop] = api
        return api

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    @property
    def collection_name(self) -> str:
        return self._collection_name

    @property
    def distance(self) -> str:
        """The collection's distance: ``"cosine"``, ``"l2"`` or ``"ip"``."""
        assert self._distance is not None
        return self._distance

    # -- adding -------------------------------------------------------------------------------

    def _prepare(
        self,
        texts: Iterable[str],
        metadatas: Sequence[Mapping[str, Any] | None] | None,
        ids: Sequence[str | None] | None,
        kwargs: dict[str, Any],
    ) -> tuple[list[str], list[str] | None, dict[str, Any]]:
        """The texts checked, the ids (given ones kept, missing ones generated) and store options."""
        kwargs.pop("batch_size", None)  # LangChain's indexing API passes it; one transaction here
        unknown = sorted(set(kwargs) - {"ttl"})
        if unknown:
            raise TypeError(f"add_texts() got unexpected keyword arguments {', '.join(map(repr, unknown))}")
        if isinstance(texts, str):
            raise InvalidInput("texts must be a list of str, got one str")
        text_list = list(texts)
        for i, text in enumerate(text_list):
            check_text(text, f"texts[{i}]")  # before paying for the embedding of a batch that fails
        if metadatas is not None and len(metadatas) != len(text_list):
            raise InvalidInput(f"metadatas has {len(metadatas)} items but texts has {len(text_list)}")
        if ids is not None and len(ids) != len(text_list):
            raise InvalidInput(f"ids has {len(ids)} items but texts has {len(text_list)}")
        full_ids = None
        if ids is not None and any(i is not None for i in ids):
            full_ids = [i if i is not None else str(uuid.uuid4()) for i in ids]
        return text_list, full_ids, kwargs

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed ``texts`` and store them in one transaction; returns their ids.

        A given id that exists is replaced (text, metadata and vector). ``ttl=`` (a timedelta)
        makes the documents expire.
        """
        text_list, full_ids, options = self._prepare(texts, metadatas, ids, kwargs)
        if not text_list:
            return []
        vectors = self._embedding.embed_documents(text_list)
        self._embedder.learn(vectors[0])  # so a store made by from_texts needs no probe
        return self._sync_api().store_batch(text_list, metadatas, full_ids, embeddings=vectors, **options)

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        text_list, full_ids, options = self._prepare(texts, metadatas, ids, kwargs)
        if not text_list:
            return []
        vectors = await self._embedding.aembed_documents(text_list)
        self._embedder.learn(vectors[0])
        api = await self._async_api()
        return await api.store_batch(text_list, metadatas, full_ids, embeddings=vectors, **options)

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        collection_name: str = "langchain",
        database_url: str | None = None,
        **kwargs: Any,
    ) -> Self:
        """A store on ``collection_name`` (created when absent) with ``texts`` added."""
        store = cls.__new__(cls)
        store._setup(embedding, collection_name, database_url, kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        store._sync_api()
        return store

    @classmethod
    async def afrom_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        collection_name: str = "langchain",
        database_url: str | None = None,
        **kwargs: Any,
    ) -> Self:
        store = await cls.acreate(embedding, collection_name, database_url, **kwargs)
        await store.aadd_texts(texts, metadatas, ids=ids)
        return store

    # -- deleting and reading by id -------------------------------------------------------------

    def _delete_target(
        self, ids: list[str] | None, filter: Mapping[str, Any] | None, kwargs: Mapping[str, Any]
    ) -> None:
        if kwargs:
            unknown = ", ".join(map(repr, sorted(kwargs)))
            raise TypeError(f"delete() got unexpected keyword arguments {unknown}")
        if ids is None and filter is None:
            raise InvalidInput(
                "delete() needs ids or filter=; pass filter={} to delete every document of the collection"
            )
        if ids is not None and filter is not None:
            raise InvalidInput("delete() takes ids or filter=, not both")

    def delete(
        self, ids: list[str] | None = None, *, filter: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> bool:
        """Delete the documents with these ids (missing ones are ignored), or those matching
        ``filter``. Without either it raises rather than empty the collection: ``filter={}`` does."""
        self._delete_target(ids, filter, kwargs)
        api = self._sync_api()
        if filter is not None:
            api.delete_by_filter(filter)
        else:
            for id in dict.fromkeys(ids or ()):
                api.delete(id)
        return True

    async def adelete(
        self, ids: list[str] | None = None, *, filter: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> bool:
        self._delete_target(ids, filter, kwargs)
        api = await self._async_api()
        if filter is not None:
            await api.delete_by_filter(filter)
        else:
            for id in dict.fromkeys(ids or ()):
                await api.delete(id)
        return True

    def delete_collection(self) -> None:
        """Drop the collection: its documents and its HNSW index. The store stays usable: its
        next call creates the collection again, empty (mem0's ``Memory.reset()`` relies on that)."""
        self._sync_api().drop()
        self._forget_collection()

    async def adelete_collection(self) -> None:
        await (await self._async_api()).drop()
        self._forget_collection()

    def _forget_collection(self) -> None:
        """A dropped collection's API objects refuse every call: the next call makes new ones."""
        self._memory = None
        self._amemories.clear()

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents with these ids, in the order asked, once each; missing ids are left out.
        One round trip."""
        found = self._sync_api().get(ids=list(dict.fromkeys(ids)))
        return [_document(m) for m in found]

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        found = await (await self._async_api()).get(ids=list(dict.fromkeys(ids)))
        return [_document(m) for m in found]

    # -- similarity -----------------------------------------------------------------------------

    def similarity_search_with_score_by_vector(
        self, embedding: Sequence[float], k: int = 4, filter: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """The ``k`` nearest documents with their distance (lower is closer): the cosine distance,
        the L2 distance, or minus the inner product, as the collection's distance is."""
        options = _search_options(kwargs, "similarity_search")
        found = self._sync_api().retrieve(None, k, filter, embedding, **options)
        return [(_document(m), _distance(self.distance, m)) for m in found]

    async def asimilarity_search_with_score_by_vector(
        self, embedding: Sequence[float], k: int = 4, filter: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        options = _search_options(kwargs, "asimilarity_search")
        api = await self._async_api()
        found = await api.retrieve(None, k, filter, embedding, **options)
        return [(_document(m), _distance(self.distance, m)) for m in found]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """As :meth:`similarity_search_with_score_by_vector`; with ``mode="text"`` or
        ``"hybrid"`` (and ``rrf_k``, ``vector_weight``, ``text_weight``, ``text_cutoff``), memorix's
        full text or hybrid ranking of ``query``, its "distance" ``1 - Memory.score`` (lower is
        closer)."""
        if kwargs.get("mode", "vector") != "vector":
            options = _search_options(kwargs, "similarity_search")
            found = self._sync_api().retrieve(query, k, filter, **options)
            return [(_document(m), 1.0 - (m.score or 0.0)) for m in found]
        vector = self._embedding.embed_query(query)
        return self.similarity_search_with_score_by_vector(vector, k, filter, **kwargs)

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        if kwargs.get("mode", "vector") != "vector":
            options = _search_options(kwargs, "asimilarity_search")
            found = await (await self._async_api()).retrieve(query, k, filter, **options)
            return [(_document(m), 1.0 - (m.score or 0.0)) for m in found]
        vector = await self._embedding.aembed_query(query)
        return await self.asimilarity_search_with_score_by_vector(vector, k, filter, **kwargs)

    def similarity_search(
        self, query: str, k: int = 4, filter: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in await self.asimilarity_search_with_score(query, k, filter, **kwargs)]

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score_by_vector(embedding, k, filter, **kwargs)]

    async def asimilarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        scored = await self.asimilarity_search_with_score_by_vector(embedding, k, filter, **kwargs)
        return [doc for doc, _ in scored]

    # -- relevance ------------------------------------------------------------------------------

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return relevance_from_distance(self.distance)

    def _relevant(self, scored: list[tuple[Document, float]]) -> list[tuple[Document, float]]:
        relevance = self._select_relevance_score_fn()
        return [(doc, relevance(d)) for doc, d in scored]

    def _similarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return self._relevant(self.similarity_search_with_score(query, k, **kwargs))

    async def _asimilarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return self._relevant(await self.asimilarity_search_with_score(query, k, **kwargs))

    def similarity_search_by_vector_with_relevance_scores(
        self, embedding: Sequence[float], k: int = 4, filter: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """The ``k`` nearest documents with their relevance in [0, 1] (:func:`relevance_from_distance`)."""
        return self._relevant(self.similarity_search_with_score_by_vector(embedding, k, filter, **kwargs))

    async def asimilarity_search_by_vector_with_relevance_scores(
        self, embedding: Sequence[float], k: int = 4, filter: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        scored = await self.asimilarity_search_with_score_by_vector(embedding, k, filter, **kwargs)
        return self._relevant(scored)

    # -- maximal marginal relevance -------------------------------------------------------------

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """``k`` documents chosen by MMR among the ``fetch_k`` nearest: ``retrieve(mmr=True)``."""
        fetch = _check_mmr(k, fetch_k, lambda_mult)
        options = _search_options(kwargs, "max_marginal_relevance_search")
        found = self._sync_api().retrieve(
            None, k, filter, embedding, mmr=True, fetch_k=fetch, lambda_mult=lambda_mult, **options
        )
        return [_document(m) for m in found]

    async def amax_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        fetch = _check_mmr(k, fetch_k, lambda_mult)
        options = _search_options(kwargs, "amax_marginal_relevance_search")
        api = await self._async_api()
        found = await api.retrieve(
            None, k, filter, embedding, mmr=True, fetch_k=fetch, lambda_mult=lambda_mult, **options
        )
        return [_document(m) for m in found]

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        vector = self._embedding.embed_query(query)
        return self.max_marginal_relevance_search_by_vector(vector, k, fetch_k, lambda_mult, filter, **kwargs)

    async def amax_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        vector = await self._embedding.aembed_query(query)
        return await self.amax_marginal_relevance_search_by_vector(
            vector, k, fetch_k, lambda_mult, filter, **kwargs
        )

    def as_retriever(self, **kwargs: Any) -> MemorixRetriever:
        """LangChain's retriever, whose ``search_type`` also takes ``"text"`` and ``"hybrid"``
        (memorix's full text and hybrid rankings; ``search_kwargs`` as for ``similarity_search``)."""
        tags = kwargs.pop("tags", None) or [*self._get_retriever_tags()]
        return MemorixRetriever(vectorstore=self, tags=tags, **kwargs)

    def __repr__(self) -> str:
        name, embedder = self._collection_name, self._embedder.name
        return f"MemorixVectorStore(collection_name={name!r}, embedder={embedder!r})"


class MemorixRetriever(VectorStoreRetriever):
    """``VectorStoreRetriever`` with two more search types, ``"text"`` and ``"hybrid"``: a
    ``similarity_search`` in that mode. The others (``"similarity"``, ``"mmr"``,
    ``"similarity_score_threshold"``) are LangChain's own."""

    allowed_search_types: ClassVar[tuple[str, ...]] = (
        *VectorStoreRetriever.allowed_search_types,
        "text",
        "hybrid",
    )

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        if self.search_type in ("text", "hybrid"):
            options = self.search_kwargs | kwargs | {"mode": self.search_type}
            return self.vectorstore.similarity_search(query, **options)
        return super()._get_relevant_documents(query, run_manager=run_manager, **kwargs)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        if self.search_type in ("text", "hybrid"):
            options = self.search_kwargs | kwargs | {"mode": self.search_type}
            return await self.vectorstore.asimilarity_search(query, **options)
        return await super()._aget_relevant_documents(query, run_manager=run_manager, **kwargs)
