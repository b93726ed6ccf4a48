"""Full text and hybrid retrieval, ``$text`` / ``$contains`` filters (migration 0006)."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from memorix_pg import ConfigurationError, FilterError, InvalidInput
from memorix_pg.crypto import generate_key
from memorix_pg.writes import DEFER_INDEX_MIN_ROWS

NOTES = [
    "order 48213 shipped from the Lyon warehouse on Tuesday",
    "the weather in Lyon is mild in spring",
    "Alice prefers green tea in the morning",
    "Bob asked about the status of his refund",
    "what is the best way to brew coffee",
    "the status page shows all systems operational",
    "order 77120 was cancelled by the customer",
    "meeting with Carol moved to Thursday afternoon",
]


# Common words are common because the collection says so: a conversation's filler.
FILLER = [f"what is the plan of day {i}? the status of it is fine" for i in range(40)]


@pytest.fixture
def api(make_api):  # type: ignore[no-untyped-def]
    api = make_api("hybrid", embedder="hash-64")
    api.store_batch(
        NOTES + FILLER,
        [{"i": i, "kind": "order" if "order" in t else "other"} for i, t in enumerate(NOTES)]
        + [{"i": 100 + i, "kind": "filler"} for i in range(len(FILLER))],
    )
    return api


def texts(memories) -> list[str]:  # type: ignore[no-untyped-def]
    return [m.text for m in memories]


def test_text_mode_finds_the_rare_identifier_in_a_question(make_api) -> None:  # type: ignore[no-untyped-def]
    api = make_api("rare", embedder="hash-64")
    api.store_batch(NOTES + FILLER)
    found = api.retrieve("what is the status of order 48213?", top_k=3, mode="text", ranks=True)
    assert found[0].text == NOTES[0]
    assert 0 < found[0].score <= 1
    assert found[0].ranks["text_rank"] == 1
    scores = [m.score for m in found]
    assert scores == sorted(scores, reverse=True)


def test_text_mode_returns_only_matching_memories(api) -> None:  # type: ignore[no-untyped-def]
    assert texts(api.retrieve("Carol", top_k=5, mode="text")) == [NOTES[7]]
    assert api.retrieve("zebra", top_k=5, mode="text") == []


def test_websearch_syntax_is_kept_for_quotes_and_minus(api) -> None:  # type: ignore[no-untyped-def]
    assert texts(api.retrieve('"order 77120"', top_k=5, mode="text")) == [NOTES[6]]
    found = texts(api.retrieve("order -cancelled", top_k=5, mode="text"))
    assert found == [NOTES[0]]


def test_hybrid_fuses_both_arms_and_is_never_short(api) -> None:  # type: ignore[no-untyped-def]
    found = api.retrieve("order 48213 Lyon", top_k=10, mode="hybrid", ranks=True)
    assert len(found) == 10  # the vector arm fills past the text matches
    assert found[0].text == NOTES[0]
    assert found[0].ranks["text_rank"] == 1 and found[0].ranks["vector_rank"] is not None
    # Only "order 48213 ... Lyon" holds two thirds of the best's weight: the two rows holding
    # one of its other words are left to the vector arm, unless the cut is off.
    assert sum(m.ranks["text_rank"] is not None for m in found) == 1
    every_match = api.retrieve("order 48213 Lyon", top_k=10, mode="hybrid", ranks=True, text_cutoff=0.0)
    assert sum(m.ranks["text_rank"] is not None for m in every_match) == 3
    fused = [m.score for m in found]
    assert fused == sorted(fused, reverse=True)
    for m in found:  # the fused score is the weighted sum of reciprocal ranks
        expected = 1 / (60 + m.ranks["vector_rank"]) + (
            1 / (60 + m.ranks["text_rank"]) if m.ranks["text_rank"] is not None else 0
        )
        assert m.score == pytest.approx(expected)
    plan = api.explain_retrieve("order 48213 Lyon", mode="hybrid")
    assert plan.path == "hybrid" and "reciprocal rank fusion" in plan.reason


def test_hybrid_weights_and_rrf_k(api) -> None:  # type: ignore[no-untyped-def]
    only_text = api.retrieve("Carol", top_k=3, mode="hybrid", vector_weight=0.0, ranks=True)
    assert only_text[0].text == NOTES[7]
    vector = api.retrieve("Carol", top_k=3)
    only_vector = api.retrieve("Carol", top_k=3, mode="hybrid", text_weight=0.0, rrf_k=1.0)
    assert [m.id for m in only_vector] == [m.id for m in vector]
    with pytest.raises(InvalidInput, match="rrf_k"):
        api.retrieve("Carol", mode="hybrid", rrf_k=-1)
    with pytest.raises(InvalidInput, match="mode"):
        api.retrieve("Carol", mode="bm25")


def test_agreement_outranks_a_lone_text_hit_unless_a_low_rrf_k_lets_text_lead(make_api) -> None:  # type: ignore[no-untyped-def]
    """The README's caveat and remedy: memories that both arms like (the question's other rare
    word, and its meaning) outrank the one memory holding its identifier at rrf_k 60, whatever
    the text weight; at rrf_k 1 with text_weight 3 the text arm's first comes first."""
    import numpy as np

    rng = np.random.default_rng(3)

    def near(axis: int, noise: float) -> list[float]:
        v = np.zeros(64)
        v[axis] = 1.0
        v += rng.normal(0, noise, 64)
        return [float(x) for x in v / np.linalg.norm(v)]

    answer = "order 48213 for the barbados was cancelled"
    # Two distractors: "stimulus" is then nearly as rare as "48213", and they pass the text cut.
    distractors = [f"order {11000 + i} for the stimulus was shipped" for i in range(2)]
    others = [f"order {20000 + i} for the kettle was delayed" for i in range(100)]
    api = make_api("distracted", embedder="hash-64")
    api.store_batch(
        [answer, *distractors, *others],
        # The question's meaning is axis 0: the distractors sit by it, the answer far from it.
        embeddings=[near(1, 0.1)] + [near(0, 0.1) for _ in distractors] + [near(2, 0.5) for _ in others],
    )
    question, vector = "what is the stimulus of order 48213?", near(0, 0.0)
    assert api.retrieve(question, top_k=1, mode="text")[0].text == answer
    for text_weight in (1.0, 3.0):
        fused = api.retrieve(question, top_k=6, mode="hybrid", embedding=vector, text_weight=text_weight)
        assert fused[0].text in distractors and answer in [m.text for m in fused]
    led = [
        m.text
        for m in api.retrieve(question, top_k=6, mode="hybrid", embedding=vector, rrf_k=1, text_weight=3)
    ]
    assert led[0] == answer and set(led[1:3]) == set(distractors)


def test_both_arms_honour_filter_tenant_and_ttl(make_api) -> None:  # type: ignore[no-untyped-def]
    a = make_api("arms", embedder="hash-64", tenant="a")
    b = make_api("arms", embedder="hash-64", tenant="b")
    a.store_batch(["order 1 for a", "order 2 for a", "note for a"], [{"n": 1}, {"n": 2}, {"n": 3}])
    b.store_batch(["order 1 for b"])
    a.store("order 3 expiring", ttl=timedelta(microseconds=1))
    for mode in ("text", "hybrid"):
        found = a.retrieve("order", top_k=10, mode=mode)
        assert sorted(texts(found)) == (
            ["order 1 for a", "order 2 for a"]
            if mode == "text"
            else ["note for a", "order 1 for a", "order 2 for a"]
        )
        assert texts(a.retrieve("order", top_k=10, filter={"n": 2}, mode=mode)) == ["order 2 for a"]
        assert texts(b.retrieve("order", top_k=10, mode=mode)) == ["order 1 for b"]


def test_text_and_contains_filters_combine_with_other_operators(api) -> None:  # type: ignore[no-untyped-def]
    def ids(filter):  # type: ignore[no-untyped-def]
        return sorted(m.metadata["i"] for m in api.list(filter, limit=100))

    assert ids({"$text": {"$search": "order"}}) == [0, 6]
    assert ids({"$text": {"$search": "order -cancelled"}}) == [0]
    assert ids({"$text": {"$search": '"status page"'}}) == [5]
    assert ids({"$contains": "Lyon"}) == [0, 1]
    assert ids({"$contains": "lyon"}) == []  # case-sensitive substring
    assert ids({"$contains": "4821"}) == [0]  # a substring, not a word
    assert ids({"$contains": "Lyon", "i": {"$gt": 0}}) == [1]
    assert ids({"$or": [{"$contains": "Carol"}, {"$text": {"$search": "coffee"}}]}) == [4, 7]
    assert ids({"$nor": [{"$text": {"$search": "order"}}], "kind": "other"}) == [1, 2, 3, 4, 5, 7]
    assert ids({"$not": {"$contains": "the"}}) == [7]
    assert api.count({"$text": {"$search": "status"}, "kind": {"$in": ["other"]}}) == 2
    found = api.retrieve("tea", top_k=2, filter={"$contains": "Alice"})
    assert texts(found) == [NOTES[2]]


@pytest.mark.parametrize(
    "bad",
    [
        {"$text": "order"},
        {"$text": {"$search": 3}},
        {"$text": {"$search": "x", "$language": "en"}},
        {"$contains": ""},
        {"$contains": ["a"]},
        {"tags": {"$elemMatch": {"a": 1, "$or": [{"$contains": "x"}]}}},
        {"tags": {"$elemMatch": {"$text": {"$search": "x"}}}},
    ],
)
def test_malformed_text_operators_are_refused(api, bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FilterError):
        api.list(bad)


def test_encrypted_collections_refuse_text_search(make_api) -> None:  # type: ignore[no-untyped-def]
    api = make_api("secret", embedder="hash-64", encryption_key=generate_key())
    api.store("order 48213 shipped")
    for mode in ("text", "hybrid"):
        with pytest.raises(InvalidInput, match="encrypted"):
            api.retrieve("order", mode=mode)
    for filter in ({"$text": {"$search": "order"}}, {"$or": [{"$contains": "order"}, {"a": 1}]}):
        with pytest.raises(FilterError, match="encrypted"):
            api.list(filter)
    assert len(api.retrieve("order")) == 1  # vector search works


def test_text_search_config_is_chosen_at_creation(make_api) -> None:  # type: ignore[no-untyped-def]
    english = make_api("english", embedder="hash-64", text_search_config="english")
    english.store_batch(["the orders were shipped", "a cat sleeps"])
    assert texts(english.retrieve("shipping order", mode="text")) == ["the orders were shipped"]
    assert english.count({"$text": {"$search": "ship"}}) == 1
    many = [f"order {i} shipped" for i in range(300)]  # the COPY path
    english.store_batch(many)
    assert english.count({"$text": {"$search": "ships"}}) == 301
    simple = make_api("simple_one", embedder="hash-64")
    simple.store_batch(["the orders were shipped"])
    assert simple.retrieve("shipping", mode="text") == []
    with pytest.raises(ConfigurationError, match="text_search_config"):
        make_api("english", embedder="hash-64", text_search_config="simple")
    with pytest.raises(ConfigurationError, match="klingon"):
        make_api("other", embedder="hash-64", text_search_config="klingon")


def test_text_mode_needs_words(api) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput, match="query text"):
        api.retrieve(None, mode="text", embedding=[0.1] * 64)
    assert len(api.retrieve("", mode="hybrid", top_k=3)) == 3  # newest first, as in vector mode


def test_a_bulk_load_merges_the_text_index_pending_list(make_api, database_url) -> None:  # type: ignore[no-untyped-def]
    """Every text match reads the GIN pending list whole: a bulk load leaves it empty."""

    def pending_pages() -> int:  # merges the list, and says how many pages it held
        with psycopg.connect(database_url, autocommit=True) as conn:
            row = conn.execute("SELECT gin_clean_pending_list('memorix.memories_text_search_idx'::regclass)")
            return int(row.fetchone()[0])  # type: ignore[index]

    api = make_api("bulk", embedder="hash-64")
    api.store_batch([f"order {i} for customer {i % 97} shipped" for i in range(DEFER_INDEX_MIN_ROWS)])
    assert pending_pages() == 0
    api.store_batch([f"note {i} about the weather in town {i}" for i in range(20)])  # not a bulk load
    assert pending_pages() > 0
    assert [m.text for m in api.retrieve("customer 41 order 500", top_k=1, mode="text")] == [
        "order 500 for customer 15 shipped"
    ]
