"""Hybrid fusion against a brute-force oracle: the text arm's cut, the fused ties, the weights.

The oracle fetches both arms' full rankings on its own (the vector ranking by exact distance in
SQL, each live row's lexemes and ``ts_rank_cd`` in SQL, the rarity weights in Python), cuts the
text ranking at ``text_cutoff`` times its best score and fuses both by reciprocal rank, ties
going to the better text rank, then the vector rank, then the id (memorix_pg.hybrid).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from memorix_pg import InvalidInput
from memorix_pg.embedders import resolve_embedder
from memorix_pg.hybrid import CANDIDATES_MIN, DF_CAP, SAMPLE_ROWS

EMBEDDER = "hash-64"
NAMES = ["alma", "bruno", "celia", "dario", "elena", "fabio", "greta", "hugo", "ines", "jonas", "karla"]
PLACES = ["lyon", "porto", "gdansk", "tartu", "bergen", "lecce", "ghent"]
PRODUCTS = ["kettle", "lamp", "router", "jacket", "blender", "monitor", "scooter", "tripod", "drone"]
VERBS = ["shipped", "delayed", "cancelled", "refunded", "delivered"]
ROWS = 180  # fewer than SAMPLE_ROWS: the rarity weights are exact counts the oracle can redo


def corpus(seed: int = 7) -> list[tuple[str, dict[str, Any]]]:
    """Conversation-like memories sharing their common words, one order id each."""
    rng = random.Random(seed)
    out = []
    for i in range(ROWS):
        person = f"{rng.choice(NAMES)} {rng.choice(NAMES)}"
        place, product, verb = rng.choice(PLACES), rng.choice(PRODUCTS), rng.choice(VERBS)
        order = 10_000 + 37 * i
        templates = [
            f"{person} said order {order} for the {product} was {verb} to {place}",
            f"user: what is the status of my {product} order {order}? assistant: {verb}, {person}",
            f"note: {person} from {place} - order {order} ({product}) {verb}",
        ]
        out.append((templates[i % 3], {"group": "a" if i % 4 else "b", "order": order}))
    return out


CORPUS = corpus()
assert len(CORPUS) < SAMPLE_ROWS


def order_text(order: int) -> str:
    return next(t for t, m in CORPUS if m["order"] == order)


@pytest.fixture
def api(make_api):  # type: ignore[no-untyped-def]
    api = make_api("fusion", embedder=EMBEDDER, distance="cosine", tenant="a")
    api.store_batch([t for t, _ in CORPUS], [m for _, m in CORPUS], ids=[f"m{i:03d}" for i in range(ROWS)])
    # Rows neither arm may see: another tenant's, and expired ones, holding the queries' words.
    other = make_api("fusion", embedder=EMBEDDER, distance="cosine", tenant="b")
    other.store_batch([f"order {10_000 + 37 * i} status of {NAMES[i % 11]}" for i in range(40)])
    api.store_batch(
        [f"order {10_000 + 37 * i} lyon status {PRODUCTS[i % 9]}" for i in range(40)],
        [{"group": "a"}] * 40,
        ttl=timedelta(microseconds=1),
    )
    return api


def _rows(url: str, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


LIVE = """
    FROM memorix.memories m JOIN memorix.collections c ON c.id = m.collection_id
    WHERE c.name = 'fusion' AND m.tenant = 'a' AND (m.expires_at IS NULL OR m.expires_at > now())
"""
FILTERED = LIVE + " AND m.metadata @> %s"


def vector_ranking(url: str, query: str, group: dict[str, Any]) -> list[str]:
    """Every live row of the filter, nearest first (ties by id), by exact cosine distance."""
    vector = resolve_embedder(EMBEDDER).embed([query])[0]
    literal = "[" + ",".join(repr(float(x)) for x in vector) + "]"
    return [
        r[0]
        for r in _rows(
            url, f"SELECT m.id {FILTERED} ORDER BY m.embedding <=> %s::vector, m.id", (Jsonb(group), literal)
        )
    ]


def text_scores(url: str, query: str, group: dict[str, Any]) -> list[tuple[str, float]]:
    """Every matching live row of the filter with its text score, best first, as hybrid.py
    documents the scoring: BM25 idf of the query's lexemes (counted over the tenant's live rows,
    exactly, as the collection is smaller than the sample), a row's score the share of the
    weight it holds, ties by ts_rank_cd against the match, then id. Websearch syntax: ts_rank_cd
    against websearch_to_tsquery."""
    if '"' in query or " or " in query:
        rows = _rows(
            url,
            f"SELECT m.id, ts_rank_cd(m.text_search, websearch_to_tsquery('simple', %s)) {FILTERED}"
            " AND m.text_search @@ websearch_to_tsquery('simple', %s)",
            (query, Jsonb(group), query),
        )
        ranked = sorted(((float(rank), i) for i, rank in rows), key=lambda r: (-r[0], r[1]))
        return [(i, s) for s, i in ranked]
    lexemes = _rows(url, "SELECT unnest(tsvector_to_array(to_tsvector('simple', %s)))", (query,))
    live = [set(r[0]) for r in _rows(url, f"SELECT tsvector_to_array(m.text_search) {LIVE}", ())]
    n = float(len(live))
    weights: dict[str, tuple[float, bool]] = {}
    for (lexeme,) in lexemes:
        df = float(sum(lexeme in r for r in live))
        if df:
            weights[lexeme] = (math.log(1 + (n - df + 0.5) / (df + 0.5)), df < n and df <= DF_CAP)
    informative = sorted(lex for lex, (_, kept) in weights.items() if kept) or sorted(weights)
    if not informative:
        return []
    total = sum(w for w, _ in weights.values())
    match = " | ".join(f"'{lex}'" for lex in informative)
    rows = _rows(
        url,
        f"SELECT m.id, tsvector_to_array(m.text_search), ts_rank_cd(m.text_search, %s::tsquery) {FILTERED}"
        " AND m.text_search @@ %s::tsquery",
        (match, Jsonb(group), match),
    )
    scored = [
        (sum(w for lex, (w, _) in weights.items() if lex in held) / total, float(rank_cd), i)
        for i, held, rank_cd in rows
    ]
    # Rounded: the same sum added up in another order must not reorder rows.
    scored.sort(key=lambda s: (-round(s[0], 12), -s[1], s[2]))
    return [(i, s) for s, _, i in scored]


def oracle(
    url: str,
    query: str,
    k: int,
    group: dict[str, Any],
    rrf_k: float = 60.0,
    w_vector: float = 1.0,
    w_text: float = 1.0,
    cutoff: float = 0.67,
) -> list[tuple[str, int | None, int | None]]:
    """(id, vector rank, text rank) of the fused top k."""
    candidates = max(2 * k, CANDIDATES_MIN)
    vector = vector_ranking(url, query, group)[:candidates]
    text = text_scores(url, query, group)[:candidates]
    if text:
        best = text[0][1]
        # The cut must not fall on a score the two sums could round either side of.
        assert all(abs(s - cutoff * best) > 1e-9 for _, s in text) or cutoff in (0.0, 1.0)
        text = [(i, s) for i, s in text if s >= cutoff * best]
    fused: dict[str, float] = {}
    vector_rank = {i: r for r, i in enumerate(vector, 1)}
    text_rank = {i: r for r, (i, _) in enumerate(text, 1)}
    for i, r in vector_rank.items():
        fused[i] = w_vector / (rrf_k + r)
    for i, r in text_rank.items():
        fused[i] = fused.get(i, 0.0) + w_text / (rrf_k + r)
    order = sorted(
        fused,
        key=lambda i: (-fused[i], text_rank.get(i, math.inf), vector_rank.get(i, math.inf), i),
    )
    return [(i, vector_rank.get(i), text_rank.get(i)) for i in order[:k]]


CASES = [
    # query, top_k, filter, options
    ("what is the status of order 10370?", 5, None, {}),
    ("did order 10740 for celia arrive?", 10, None, {}),
    ("the kettle that alma bought was sent out in porto", 8, None, {}),
    ("the kettle that alma bought was sent out in porto", 8, None, {"text_cutoff": 0.0}),
    ("router greta lyon delayed", 6, {"group": "a"}, {"rrf_k": 5.0, "text_weight": 2.0, "text_cutoff": 0.3}),
    ("jonas hugo tripod gdansk", 12, None, {"rrf_k": 1.0, "vector_weight": 0.5, "text_cutoff": 1.0}),
    ("status of order 11110 for bruno", 7, {"group": "b"}, {"vector_weight": 0.0}),
    ('"order 10037" or lamp', 9, None, {"text_cutoff": 0.6}),
    # Ties: every row only the vector arm ranks scores 0; text-only and vector-only ranks tie.
    ("order 10370", 6, None, {"vector_weight": 0.0}),
    ("what is the status of order 10370 for karla?", 10, {"group": "b"}, {"rrf_k": 0.0}),
]


@pytest.mark.parametrize(("query", "k", "filter", "options"), CASES)
def test_hybrid_equals_the_brute_force_fusion(api, database_url, query, k, filter, options) -> None:  # type: ignore[no-untyped-def]
    found = api.retrieve(query, top_k=k, filter=filter, mode="hybrid", exact=True, ranks=True, **options)
    names = {"rrf_k": "rrf_k", "vector_weight": "w_vector", "text_weight": "w_text", "text_cutoff": "cutoff"}
    expected = oracle(database_url, query, k, filter or {}, **{names[o]: v for o, v in options.items()})
    assert len(found) == k  # never short: the vector arm fills
    assert [(m.id, m.ranks["vector_rank"], m.ranks["text_rank"]) for m in found] == expected


def test_the_cut_changes_the_fusion_and_zero_is_plain_rrf(api, database_url) -> None:  # type: ignore[no-untyped-def]
    query = "the kettle that alma bought was sent out in porto"
    cut = [m.id for m in api.retrieve(query, top_k=8, mode="hybrid", exact=True)]
    plain = [m.id for m in api.retrieve(query, top_k=8, mode="hybrid", exact=True, text_cutoff=0.0)]
    assert cut != plain  # the data has a weak text tail for the cut to drop
    assert plain == [i for i, _, _ in oracle(database_url, query, 8, {}, cutoff=0.0)]
    every = text_scores(database_url, query, {})
    ranked = api.retrieve(query, top_k=8, mode="hybrid", exact=True, ranks=True)
    best = every[0][1]
    for m in ranked:  # a row below the cut has no text rank (nor text score)
        score = dict(every).get(m.id)
        confident = score is not None and score >= 0.67 * best
        assert (m.ranks["text_rank"] is not None) == confident
        assert (m.ranks["text_score"] is not None) == confident


def test_an_identifier_in_a_question_comes_first(make_api) -> None:  # type: ignore[no-untyped-def]
    """The benchmark's exact-identifier query: the question's other words are in many memories,
    the identifier in one, which the vector arm does not rank."""
    api = make_api("identifier", embedder=EMBEDDER)
    fillers = [f"what is the status of the {p} order for {n}?" for p in PRODUCTS for n in NAMES]
    fillers += [f"{n} said the order status of the {p} is what {n} expected" for p in PRODUCTS for n in NAMES]
    api.store_batch([*fillers, "order 48213 shipped from the Lyon warehouse"])
    query = "what is the status of order 48213?"
    vector = api.retrieve(query, top_k=10, exact=True)
    assert "order 48213 shipped from the Lyon warehouse" not in [m.text for m in vector]
    found = api.retrieve(query, top_k=5, mode="hybrid", ranks=True)
    assert found[0].text == "order 48213 shipped from the Lyon warehouse"
    assert found[0].ranks["text_rank"] == 1 and found[0].ranks["vector_rank"] is None
    # The vector arm's first ties it (1 / (60 + 1) each): the text rank breaks the tie.
    assert found[1].ranks["vector_rank"] == 1 and found[1].score == pytest.approx(found[0].score)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5", True, None])
def test_text_cutoff_is_checked(api, bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput, match="text_cutoff"):
        api.retrieve("order 10370", mode="hybrid", text_cutoff=bad)
    with pytest.raises(InvalidInput, match="text_cutoff"):
        api.explain_retrieve("order 10370", mode="hybrid", text_cutoff=bad)


def test_the_plan_names_the_cut(api) -> None:  # type: ignore[no-untyped-def]
    plan = api.explain_retrieve("order 10370", mode="hybrid", text_cutoff=0.25)
    assert "at least 0.25 x the best" in plan.reason
