"""The query vector of a search, sent to PostgreSQL in pgvector's binary format.

pgvector's SQLAlchemy type sends vectors as text: formatting 384 floats costs Python ~0.2 ms a
search, and the server parses them again. A search binds a :class:`QueryVector` instead, which
the dumper registered on each of the library's connections writes as binary (a few µs); the
SQL casts it to the collection's ``vector(dim)`` or ``halfvec(dim)``, which names the type.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from psycopg.abc import Buffer
from psycopg.adapt import Dumper
from psycopg.pq import Format

__all__ = ["QueryVector", "QueryVectorType", "register_query_vector"]


class QueryVector:
    """A query vector and the precision of the collection it searches."""

    __slots__ = ("half", "values")

    def __init__(self, values: npt.NDArray[np.float32], half: bool) -> None:
        self.values = values
        self.half = half


class _QueryVectorDumper(Dumper):
    format = Format.BINARY  # oid 0: the server takes the type from the cast around the parameter

    def dump(self, obj: QueryVector) -> Buffer:
        header = struct.pack(">HH", len(obj.values), 0)  # dimensions, unused
        return header + obj.values.astype(">f2" if obj.half else ">f4").tobytes()


class QueryVectorType(sa.types.UserDefinedType[QueryVector]):
    """The SQLAlchemy type of a bound :class:`QueryVector`: passed through to the dumper."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "vector"


def register_query_vector(dbapi_connection: Any) -> None:
    """Teach one psycopg connection to send QueryVector values (not the global adapters)."""
    dbapi_connection.adapters.register_dumper(QueryVector, _QueryVectorDumper)
