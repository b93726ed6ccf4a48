"""The engine under ``MemoryAPI`` and ``AsyncMemoryAPI``: arguments checked, operations built.

Each public method of the façades is one call here: it validates the arguments and returns a
:class:`~memorix_pg.steps.Call`, which the façade runs with its sync or async runner. The
statements, the planner and the transactions live in the operations (reads, writes, search,
lifecycle), written once for both. :class:`Core` gathers one mixin per concern:

* ``base``: the collection's state, opening it, scoping operations into calls;
* ``writing``: store_batch, update, delete, set_ttl, rotate_key;
* ``reading``: get, get_many, page, count, stats;
* ``retrieval``: retrieve in every mode and score, check_recall;
* ``maintenance``: cleanup, expiry, archive, compress, duplicates, expression indexes;
* ``governance``: forget, history, metadata schemas;
* ``database``: what spans a database (migration, listing, forgetting everywhere);
* ``arguments``: the checks of arguments shared by the others.
"""

from __future__ import annotations

from .base import VECTOR_STORES
from .database import forget_database, forget_everywhere, list_collections, prepare_database
from .governance import Governance
from .maintenance import Maintenance
from .reading import MAX_TOP_K, Reading
from .retrieval import Retrieval
from .writing import Writing

__all__ = [
    "MAX_TOP_K",
    "VECTOR_STORES",
    "Core",
    "forget_database",
    "forget_everywhere",
    "list_collections",
    "prepare_database",
]


class Core(Writing, Reading, Retrieval, Maintenance, Governance):
    """One collection of one database, for one tenant (or none): every call both façades make."""
