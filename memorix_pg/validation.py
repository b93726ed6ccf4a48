"""Checks on what callers send, before anything reaches the database.

Each check raises :class:`~memorix_pg.errors.InvalidInput` naming what was wrong, so a bad
item in a batch fails the whole call before a single row is written.
"""

from __future__ import annotations

import math
import sys
import uuid
from collections.abc import Mapping, Sequence, Sized
from datetime import date, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import InvalidInput

__all__ = [
    "MAX_COLLECTION_NAME",
    "MAX_ID_CHARS",
    "MAX_METADATA_DEPTH",
    "MAX_TEXT_BYTES",
    "check_collection_name",
    "check_embedding",
    "check_embeddings",
    "check_id",
    "check_tenant",
    "check_text",
    "check_timestamp",
    "clean_metadata",
    "int_has_json_text",
    "new_id",
]

# PostgreSQL stores up to 1 GB in a text value, but a memory is a message or a passage: 1 MiB
# keeps a runaway document from bloating the table and the embedder's input (it truncates anyway).
MAX_TEXT_BYTES = 1 << 20
MAX_METADATA_DEPTH = 32
MAX_COLLECTION_NAME = 512
# Ids are opaque strings (as in Chroma and LangChain), unique within a collection; 512 characters
# holds any UUID, URL or content hash a caller is likely to use as a key.
MAX_ID_CHARS = 512


def check_text(text: object, where: str = "text") -> str:
    """A non-empty ``str`` without NUL bytes (PostgreSQL text cannot hold ``\\x00``) up to 1 MiB."""
    if not isinstance(text, str):
        raise InvalidInput(f"{where} must be a str, got {type(text).__name__}")
    if not text.strip():
        raise InvalidInput(f"{where} is empty")
    if "\x00" in text:
        raise InvalidInput(f"{where} contains a NUL byte (\\x00), which PostgreSQL text cannot store")
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_TEXT_BYTES:
        raise InvalidInput(f"{where} is {size} bytes; the limit is {MAX_TEXT_BYTES} bytes")
    if _unencodable(text):
        raise InvalidInput(f"{where} contains a lone surrogate and is not valid UTF-8")
    return text


def _unencodable(text: str) -> bool:
    """A lone surrogate: not UTF-8, so neither PostgreSQL nor JSON can hold it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def int_has_json_text(value: int) -> bool:
    """False for an int Python refuses to print (over ``sys.get_int_max_str_digits()`` digits),
    which therefore cannot become JSON."""
    try:
        int.__repr__(value)
    except ValueError:
        return False
    return True


def _clean(value: Any, path: str, depth: int) -> Any:
    if depth > MAX_METADATA_DEPTH:
        raise InvalidInput(f"metadata nests deeper than {MAX_METADATA_DEPTH} levels at {path!r}")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not int_has_json_text(value):
            raise InvalidInput(
                f"metadata value at {path!r} is an integer of more than {sys.get_int_max_str_digits()} digits"
            )
        return int(value)
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidInput(f"metadata value at {path!r} contains a NUL byte (\\x00)")
        if _unencodable(value):
            raise InvalidInput(f"metadata value at {path!r} contains a lone surrogate and is not valid UTF-8")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"metadata value at {path!r} is {value}; JSON has no NaN or Infinity")
        return value
    if isinstance(value, np.generic):
        return _clean(value.item(), path, depth)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInput(f"metadata key {key!r} at {path!r} is not a str")
            if "\x00" in key:
                raise InvalidInput(f"metadata key at {path!r} contains a NUL byte (\\x00)")
            if _unencodable(key):
                raise InvalidInput(f"metadata key {key!r} at {path!r} contains a lone surrogate")
            out[key] = _clean(item, f"{path}.{key}" if path else key, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_clean(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise InvalidInput(
        f"metadata value at {path!r} is a {type(value).__name__}, which is not JSON "
        "(use str, int, float, bool, None, list, dict, or datetime)"
    )


def clean_metadata(metadata: object, where: str = "metadata") -> dict[str, Any]:
    """A JSON-ready copy of ``metadata``: datetimes become ISO strings, tuples lists."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidInput(f"{where} must be a dict, got {type(metadata).__name__}")
    try:
        cleaned = _clean(metadata, "", 0)
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc}") from None
    assert isinstance(cleaned, dict)
    return cleaned


def check_id(value: object, where: str = "id") -> str:
    """A memory id: any non-empty ``str`` of up to ``MAX_ID_CHARS`` characters without NUL (or a lone
    surrogate, which PostgreSQL text cannot hold either), kept exactly as given. A ``uuid.UUID``
    becomes its canonical string."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str):
        raise InvalidInput(f"{where} must be a str, got {type(value).__name__} {value!r:.80}")
    if not value:
        raise InvalidInput(f"{where} is empty; an id is a non-empty str")
    if len(value) > MAX_ID_CHARS:
        raise InvalidInput(f"{where} is {len(value)} characters; the limit is {MAX_ID_CHARS}")
    if "\x00" in value:
        raise InvalidInput(
            f"{where} {value!r:.80} contains a NUL character (\\x00), which PostgreSQL cannot store"
        )
    if _unencodable(value):
        raise InvalidInput(f"{where} {value!r:.80} contains a lone surrogate and is not valid UTF-8")
    return value


def new_id() -> str:
    """A generated id: a random UUID (version 4) as its canonical string."""
    return str(uuid.uuid4())


def check_embedding(value: object, dim: int, where: str = "embedding") -> npt.NDArray[np.float32]:
    """A finite float vector of exactly ``dim`` values."""
    try:
        with np.errstate(over="ignore"):  # a value too large for float32 becomes inf, rejected below
            array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidInput(f"{where} is not a sequence of numbers") from None
    if array.ndim != 1:
        raise InvalidInput(f"{where} must be one vector, got shape {array.shape}")
    if array.shape[0] != dim:
        raise InvalidInput(f"{where} has {array.shape[0]} dimensions; the collection uses {dim}")
    if not np.all(np.isfinite(array)):
        raise InvalidInput(f"{where} contains NaN or Infinity")
    return array


def check_embeddings(
    values: Sequence[Any] | npt.NDArray[Any], dim: int, where: str = "embeddings"
) -> npt.NDArray[np.float32]:
    """Finite float vectors of exactly ``dim`` values each, as one (rows, dim) array.

    A 2-D array is checked at once (a 100k-row load spent 0.6 s checking row by row); anything
    else, or a batch that fails, row by row, so the error names the first bad row."""
    if isinstance(values, np.ndarray) and values.ndim == 2 and values.shape[1] == dim:
        with np.errstate(over="ignore"):
            try:
                array = np.ascontiguousarray(values, dtype=np.float32)
            except (TypeError, ValueError):
                array = None
        if array is not None and bool(np.isfinite(array).all()):
            return array
    rows = [check_embedding(v, dim, f"{where}[{i}]") for i, v in enumerate(values)]
    return np.stack(rows) if rows else np.zeros((0, dim), np.float32)


def check_timestamp(value: object, where: str) -> datetime:
    """A timezone-aware datetime (or an ISO 8601 string of one)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidInput(f"{where} {value!r} is not an ISO 8601 timestamp") from None
    if not isinstance(value, datetime):
        raise InvalidInput(f"{where} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        raise InvalidInput(f"{where} has no time zone; give an aware datetime (e.g. with tzinfo=UTC)")
    return value


def check_tenant(tenant: object) -> str | None:
    if tenant is None:
        return None
    if (
        not isinstance(tenant, str)
        or not tenant
        or "\x00" in tenant
        or len(tenant) > MAX_COLLECTION_NAME
        or _unencodable(tenant)
    ):
        raise InvalidInput(
            f"tenant must be a non-empty str of at most {MAX_COLLECTION_NAME} characters without NUL "
            "or lone surrogates, "
            f"got {tenant!r:.80}"
        )
    return tenant


def check_collection_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"collection_name must be a non-empty str, got {name!r}")
    if "\x00" in name:
        raise InvalidInput("collection_name contains a NUL byte (\\x00)")
    if _unencodable(name):
        raise InvalidInput(f"collection_name {name!r:.80} contains a lone surrogate and is not valid UTF-8")
    if len(name) > MAX_COLLECTION_NAME:
        raise InvalidInput(f"collection_name is {len(name)} characters; the limit is {MAX_COLLECTION_NAME}")
    return name


def check_batch_lengths(texts: Sequence[Any], **others: Sized | None) -> None:
    for label, seq in others.items():
        if seq is not None and not isinstance(seq, Sized):
            raise InvalidInput(f"{label} must be a list with one item per text, got {type(seq).__name__}")
        if seq is not None and len(seq) != len(texts):
            raise InvalidInput(f"{label} has {len(seq)} items but texts has {len(texts)}")
