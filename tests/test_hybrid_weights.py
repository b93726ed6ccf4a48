"""The text arm's lexeme weights, against a brute-force oracle, and what they cost to compute.

The weights come from a sample (the rows with the smallest content hashes) plus index counts of
the rare lexemes (memorix_pg.hybrid): the oracle recomputes both in Python from the texts alone.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from memorix_pg.hybrid import DF_CAP, SAMPLE_ROWS
from memorix_pg.query_vector import register_query_vector
from memorix_pg.runner import watch_statements

ROWS = 1000


def word(prefix: str, i: int) -> str:
    """Letters only, so that the 'simple' configuration keeps it as one lexeme."""
    return prefix + "".join(chr(ord("a") + int(d)) for d in str(i))


def text_of(i: int) -> str:
    # In every row; in half (more than DF_CAP rows); in a tenth; in a fiftieth; in two; in one.
    half = "alpha" if i % 2 else "beta"
    return (
        f"common {half} {word('ten', i % 10)} {word('fif', i % 50)} {word('pair', i // 2)} {word('row', i)}"
    )


TEXTS = [text_of(i) for i in range(ROWS)]


def oracle_scores(texts: list[str], query: str) -> list[float]:
    """Every matching row's text score, best first, computed as hybrid.py documents it."""
    rows = [set(t.split()) for t in texts]
    lexemes = set(query.split())
    ordered = sorted(texts, key=lambda t: hashlib.sha256(t.encode()).digest())
    sample = [set(t.split()) for t in ordered[:SAMPLE_ROWS]]
    whole = len(sample) < SAMPLE_ROWS
    if whole:
        n = float(len(sample))
    else:  # the sample's largest hash sizes the collection
        last = hashlib.sha256(ordered[SAMPLE_ROWS - 1].encode()).digest()
        n = (SAMPLE_ROWS - 1) / ((int.from_bytes(last[:4], "big") + 1) / 2**32)
    weights: dict[str, tuple[float, bool]] = {}
    for lexeme in lexemes:
        seen = sum(lexeme in r for r in sample)
        if whole:
            df = float(seen)
        elif seen >= 2:
            df = seen * n / len(sample)
        else:
            df = float(min(sum(lexeme in r for r in rows), DF_CAP + 1))
        if df == 0:
            continue
        top = max(n, df)
        weights[lexeme] = (math.log(1 + (top - df + 0.5) / (df + 0.5)), df < top and df <= DF_CAP)
    total = sum(w for w, _ in weights.values())
    informative = {lex for lex, (_, kept) in weights.items() if kept} or set(weights)
    return sorted(
        (sum(weights[lex][0] for lex in r & set(weights)) / total for r in rows if r & informative),
        reverse=True,
    )


@pytest.fixture
def api(make_api):  # type: ignore[no-untyped-def]
    api = make_api("weights", embedder="hash-64")
    api.store_batch(TEXTS)
    other = make_api("elsewhere", embedder="hash-64")  # another collection's rows never count
    other.store_batch([f"{word('row', 123)} {word('ten', 3)} filler {i}" for i in range(300)])
    return api


QUERIES = [
    f"common alpha {word('ten', 3)} {word('fif', 23)} {word('pair', 61)} {word('row', 123)} zebra",
    f"common beta {word('fif', 7)}",
    "common alpha beta",  # nothing rarer than DF_CAP rows: the common lexemes are matched after all
]


@pytest.mark.parametrize("query", QUERIES)
def test_text_scores_match_the_oracle(api, query: str) -> None:  # type: ignore[no-untyped-def]
    found = api.retrieve(query, top_k=10, mode="text", ranks=True)
    expected = oracle_scores(TEXTS, query)[:10]
    assert len(found) == len(expected) == 10
    assert [m.ranks["text_score"] for m in found] == pytest.approx(expected, rel=1e-9)
    assert [m.score for m in found] == pytest.approx(expected, rel=1e-9)


def test_the_rarest_match_comes_first(api) -> None:  # type: ignore[no-untyped-def]
    found = api.retrieve(QUERIES[0], top_k=3, mode="text")
    assert found[0].text == TEXTS[123]
    hybrid = api.retrieve(QUERIES[0], top_k=3, mode="hybrid", ranks=True)
    assert hybrid[0].ranks["text_rank"] == 1 and hybrid[0].text == TEXTS[123]


def test_a_small_collection_is_counted_exactly(make_api) -> None:  # type: ignore[no-untyped-def]
    api = make_api("small", embedder="hash-64")
    texts = TEXTS[:120]  # fewer rows than the sample: every count is exact
    api.store_batch(texts)
    query = f"common beta {word('ten', 4)} {word('row', 44)}"
    found = api.retrieve(query, top_k=10, mode="text", ranks=True)
    assert [m.ranks["text_score"] for m in found] == pytest.approx(oracle_scores(texts, query)[:10], rel=1e-9)


def test_the_sample_holds_the_tenants_live_rows_only(make_api) -> None:  # type: ignore[no-untyped-def]
    a = make_api("tenants", embedder="hash-64", tenant="a")
    b = make_api("tenants", embedder="hash-64", tenant="b")
    texts = TEXTS[:400]
    a.store_batch(texts)
    query = f"common beta {word('ten', 3)} {word('fif', 23)} {word('row', 123)}"
    # Were they counted, these would make the query's rare words common.
    b.store_batch([f"{word('row', 123)} {word('fif', 23)} other {i}" for i in range(600)])
    a.store_batch(
        [f"{word('row', 123)} {word('fif', 23)} gone {i}" for i in range(300)], ttl=timedelta(microseconds=1)
    )
    found = a.retrieve(query, top_k=10, mode="text", ranks=True)
    assert [m.ranks["text_score"] for m in found] == pytest.approx(oracle_scores(texts, query)[:10], rel=1e-9)
    assert found[0].text == TEXTS[123]


def _index_reads(plan: dict[str, Any]) -> Iterator[float]:
    """Rows each scan node of the text_search index returned, over all its loops."""
    if plan.get("Index Name") == "memories_text_search_idx":
        yield float(plan["Actual Rows"]) * float(plan["Actual Loops"])
    for child in plan.get("Plans", ()):
        yield from _index_reads(child)


@pytest.mark.parametrize("mode", ["text", "hybrid"])
def test_common_lexemes_are_never_read_from_the_index(api, mode: str) -> None:  # type: ignore[no-untyped-def]
    """'common' is in every row and 'alpha' in half: the statement reads neither posting list."""
    with watch_statements(api.database_url) as sent:
        api.retrieve(QUERIES[0], top_k=10, mode=mode)
    statement, params = next((s, p) for s, p in sent if "text_search @@" in s)
    with psycopg.connect(api.database_url) as conn:
        register_query_vector(conn)
        row = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    reads = list(_index_reads(row[0][0]["Plan"]))
    assert reads, "the text_search index is used"
    assert max(reads) < ROWS // 2, reads
