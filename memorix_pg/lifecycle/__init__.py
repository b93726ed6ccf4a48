"""Retention, archiving, compression, duplicates and statistics, each as SQL in one transaction.

The seed guide does these in client-side loops (fetch 1,000, re-embed, store, delete); here
cleanup is one DELETE, archive one UPDATE that moves rows with their embeddings, compression
groups by time window with ``date_bin`` in SQL, near-duplicates are found through the index
with the collection's own distance, and statistics are one GROUP BY.
"""

from .archive import archive
from .compress import compress
from .duplicates import find_duplicates
from .forget import ForgetReceipt, forget
from .retention import cleanup, count_older_than, purge_expired
from .stats import group_counts
from .summary import CompressionReport, DuplicatePair, Summarizer, extractive_summary, shared_metadata

__all__ = [
    "CompressionReport",
    "DuplicatePair",
    "ForgetReceipt",
    "Summarizer",
    "archive",
    "cleanup",
    "compress",
    "count_older_than",
    "extractive_summary",
    "find_duplicates",
    "forget",
    "group_counts",
    "purge_expired",
    "shared_metadata",
]
