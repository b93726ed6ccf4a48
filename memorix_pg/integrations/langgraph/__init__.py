"""LangGraph long-term memory on memorix-pg: :class:`MemorixStore`, a ``langgraph.store.base.BaseStore``.

Needs the optional extra: ``pip install 'memorix-pg[langgraph]'``.

One memorix collection holds the store; each item is one memory:

- **id**: a UUID derived (uuid5) from the collection, the tenant, the namespace and the key, so
  putting the same (namespace, key) again replaces the item in place: ``created_at`` stays,
  ``updated_at`` moves.
- **text**: the value as JSON text. The value is read back from it, exactly as it was put
  (JSONB would sort the keys and turn a float such as ``1e16`` or ``-0.0`` into an int).
- **metadata**: ``{"ns": "a.b", "prefixes": ["a", "a.b"], "key": ..., "value": {...},
  "indexed": bool, "ttl_minutes": m}``, where filters and namespace listings run in SQL. LangGraph
  forbids periods in namespace labels, so labels joined by ``.`` are unambiguous, and a search
  under a namespace prefix is one GIN-indexed containment test on ``prefixes``.
- **embedding**: the mean of the embeddings of the item's indexed texts; a zero vector when the
  item is not indexed (``index=False``, no text at the index paths, or a store without an
  index), which is then left out of ranked searches by ``indexed: false``.

``batch`` runs on :class:`~memorix_pg.MemoryAPI`, ``abatch`` on
:class:`~memorix_pg.AsyncMemoryAPI`. Both run the same plan (a generator of calls, like the
core's operations); only the driver differs, so the two cannot drift apart.
The package: ``store`` (:class:`MemorixStore`, its drivers and the plan), ``config`` (the index
and TTL configuration), ``requests`` (what the plan asks of its driver) and ``items`` (operations
checked, items to and from memories).
"""

from .store import MemorixStore

__all__ = ["MemorixStore"]
