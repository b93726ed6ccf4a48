"""Full text and hybrid retrieval: ``retrieve(mode="text" | "hybrid")``.

**The text arm** ranks the memories whose ``text_search`` (migration 0008: the text parsed with
the collection's configuration, GIN indexed) matches the query. A question rarely has all its
words in the memory that answers it ("what is the status of order 48213?" against "order 48213
shipped"), so the query is the OR of its lexemes, each weighted by its rarity in the collection:
``idf = ln(1 + (N - df + 0.5) / (df + 0.5))`` (BM25's), where ``df`` counts the memories holding
the lexeme and ``N`` the collection. Counting a common lexeme through the GIN index reads its
whole posting list (at 20k memories, ~1.5 ms for a word in every one; every collection's rows
count), so both come from a sample: the ``SAMPLE_ROWS`` live rows with the smallest content
hashes (uniform, read through the (collection_id, content_hash) index), whose largest hash also
sizes the collection (``N ~ (rows - 1) / hash fraction``). When the sample holds every row the
counts are exact; else a lexeme in two sampled rows or more gets the sample's frequency, and a
rarer one is counted through the index, up to ``DF_CAP + 1`` rows (a short posting list). A
memory's text score is the share of the query's weight it holds (0..1), ties broken by
``ts_rank_cd`` (frequency and proximity). Lexemes in every row, or in more than ``DF_CAP``, are
left out of the match when rarer ones exist: "what is the" would otherwise match most of the
collection, and the match reads only short posting lists. A query written with
quotes or ``-word`` is the user's own syntax: it goes to ``websearch_to_tsquery`` as written,
ranked by ``ts_rank_cd``.

**Hybrid** is reciprocal rank fusion of the vector ranking and the text ranking, in one
statement: each arm fetches its best ``candidates`` rows (filter, tenant and TTL applied to
both), and a memory scores ``w_vector / (rrf_k + vector rank) + w_text / (rrf_k + text rank)``
(an arm that did not return it adds 0). The text arm ranks only its confident matches, the rows
scoring at least ``text_cutoff`` times its best score: with OR semantics nearly every memory
shares a word with the query, and RRF gives that weak tail almost the weight of the head, so
rows sitting in both arms' tails would outrank the one memory that holds the query's
identifier. The cut is also the only place where the text score's size enters the fusion: at
``rrf_k`` 60 the text arm's second weighs nearly as much as its first (1/62 against 1/61), so a
row it admits gets almost the best row's credit. The default, 0.67, admits rows holding about
two thirds of the best's weight: "did order 44547 for Makayla Flores arrive?" keeps out another
of Makayla Flores's orders (0.54 of the best), which the vector arm ranks higher and which at
0.5 came first (benchmarks/retrieval_quality.py). Equal fused scores go to the better text
rank, then the better vector rank, then the id: a memory only the text arm ranks first beats
one only the vector arm ranks first (the text arm's first is a match of the query's rarest
words). The vector arm returns at least k rows whenever k memories match, so the result is
never short when few memories match the text (or pass the cut). The vector arm runs exactly (an
ordered scan of the matching rows) when the search planner would, else as an HNSW walk with the
planner's ``ef_search`` (its floor raised as for mode="vector").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import REGCONFIG, TSQUERY

from .models import memories
from .planner import Planner
from .query_vector import QueryVector
from .scope import Scope
from .search import SearchPlan, search_settings, vector_plan
from .statements import Filter, cached
from .steps import Operation, execute
from .vector_index import QUERY_VECTOR, CollectionInfo, distance_expression, stored_vectors

__all__ = [
    "CANDIDATES_MIN",
    "DF_CAP",
    "MODES",
    "SAMPLE_ROWS",
    "Fusion",
    "Ranked",
    "hybrid_statement",
    "rank",
    "text_statement",
    "uses_websearch",
]

MODES = ("vector", "text", "hybrid")
CANDIDATES_MIN = 50  # each hybrid arm fetches max(2k, this) rows
DF_CAP = 256  # a lexeme in more rows is left out of the match (rare ones are counted up to DF_CAP + 1)
SAMPLE_ROWS = 256  # the rows a common lexeme's frequency is estimated on

_WEBSEARCH = re.compile(r'"|(?:^|\s)-\w|\s(?:or|OR)\s')


def uses_websearch(query: str) -> bool:
    """Quotes, ``-word`` or ``or``: the query is in websearch syntax, taken as written."""
    return bool(_WEBSEARCH.search(query))


def _config() -> sa.ColumnElement[Any]:
    return sa.cast(sa.bindparam("ts_config", type_=sa.Text), REGCONFIG)


def _query_text() -> sa.BindParameter[str]:
    return sa.bindparam("text_query", type_=sa.Text)


def _matches(query: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    return memories.c.text_search.op("@@", return_type=sa.Boolean)(query)


def _hash_fraction(h: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """The first 32 bits of a content hash as a fraction of the hash space, in (0, 1]."""
    b = [sa.cast(sa.func.get_byte(h, i), sa.Float) for i in range(4)]
    return (((b[0] * 256.0 + b[1]) * 256.0 + b[2]) * 256.0 + b[3] + 1.0) / 4294967296.0


def _weighted_ranking(scope: Scope, where: sa.ColumnElement[bool]) -> sa.Select[Any]:
    """(id, text_score, rank_cd) of the matching rows, best first, at most ``:candidates``."""
    lexemes = (
        sa.func.unnest(sa.func.tsvector_to_array(sa.func.to_tsvector(_config(), _query_text())))
        .table_valued("lexeme")
        .render_derived(name="l")
    )
    # A lexeme as a tsquery of itself: quoted (backslashes and quotes escaped), not parsed again.
    escaped = sa.func.replace(sa.func.replace(lexemes.c.lexeme, "\\", "\\\\"), "'", "''")
    as_query = sa.cast(sa.func.concat("'", escaped, "'"), TSQUERY)
    # The rows with the smallest content hashes: a uniform sample, read through the
    # (collection_id, content_hash) index, whose last hash also sizes the collection.
    sample = (
        sa.select(memories.c.text_search, memories.c.content_hash)
        .where(scope.live())
        .order_by(memories.c.content_hash)
        .limit(sa.bindparam("sample_rows"))
        .cte("sample")
    )
    sampled = sa.select(sa.func.count().label("rows"), sa.func.max(sample.c.content_hash).label("last")).cte(
        "sampled"
    )
    whole = sampled.c.rows < sa.bindparam("sample_rows")
    size = sa.case(
        (whole, sa.cast(sampled.c.rows, sa.Float)),
        else_=(sampled.c.rows - 1.0) / _hash_fraction(sampled.c.last),
    )
    in_sample = (
        sa.select(sa.func.count())
        .select_from(sample)
        .where(sample.c.text_search.op("@@", return_type=sa.Boolean)(as_query))
        .scalar_subquery()
    )
    seen = (
        sa.select(lexemes.c.lexeme, as_query.label("q"), in_sample.label("seen"))
        .select_from(lexemes)
        .cte("seen")
        .prefix_with("MATERIALIZED")  # evaluated once, not at each use of its columns
    )
    # A lexeme seen in two sampled rows or more is common: its frequency is the sample's. A rarer
    # one is counted through the GIN index, up to DF_CAP + 1 rows (a short posting list).
    df = sa.case(
        (whole, sa.cast(seen.c.seen, sa.Float)),
        (seen.c.seen >= 2, seen.c.seen * size / sampled.c.rows),
        else_=sa.cast(
            sa.select(sa.func.count())
            .select_from(
                sa.select(sa.literal_column("1").label("hit"))
                .where(scope.live(), _matches(seen.c.q))
                .limit(sa.bindparam("count_cap"))
                .correlate(seen)
                .subquery("found")
            )
            .scalar_subquery(),
            sa.Float,
        ),
    )
    counted_df = (
        sa.select(seen.c.q, df.label("df"), size.label("n"))
        .select_from(seen.join(sampled, sa.true()))
        .cte("lexemes")
        .prefix_with("MATERIALIZED")
    )
    n = sa.func.greatest(counted_df.c.n, counted_df.c.df)
    idf = sa.func.ln(1.0 + (n - counted_df.c.df + 0.5) / (counted_df.c.df + 0.5))
    # Left out of the match (when rarer lexemes exist): a lexeme in every row, or in more than
    # DF_CAP rows ("what is the" would otherwise match most of the collection).
    informative = sa.and_(counted_df.c.df < n, counted_df.c.df <= sa.bindparam("df_cap"))
    weights = (
        sa.select(counted_df.c.q, idf.label("idf"), informative.label("informative"))
        .where(counted_df.c.df > 0)
        .cte("weights")
    )
    any_informative = sa.select(sa.func.bool_or(weights.c.informative)).scalar_subquery()
    match_query = (
        sa.select(sa.func.coalesce(sa.func.string_agg(sa.cast(weights.c.q, sa.Text), " | "), "")).where(
            sa.or_(weights.c.informative, sa.not_(sa.func.coalesce(any_informative, False)))
        )
    ).scalar_subquery()
    match = sa.cast(match_query, TSQUERY)
    weight_sum = sa.select(sa.func.sum(weights.c.idf)).scalar_subquery()
    held = (
        sa.select(sa.func.coalesce(sa.func.sum(weights.c.idf), 0.0))
        .where(_matches(weights.c.q))
        .correlate(memories)
        .scalar_subquery()
    )
    score = held / sa.func.nullif(weight_sum, 0.0)
    rank_cd = sa.func.ts_rank_cd(memories.c.text_search, match)
    return (
        sa.select(memories.c.id, score.label("text_score"), rank_cd.label("rank_cd"))
        .where(where, _matches(match))
        .order_by(sa.desc("text_score"), sa.desc("rank_cd"), memories.c.id)
        .limit(sa.bindparam("candidates"))
    )


def _websearch_ranking(where: sa.ColumnElement[bool]) -> sa.Select[Any]:
    """The caller's own syntax (quotes, ``-word``, ``or``), ranked by ``ts_rank_cd``."""
    query = sa.func.websearch_to_tsquery(_config(), _query_text())
    rank_cd = sa.func.ts_rank_cd(memories.c.text_search, query)
    return (
        sa.select(memories.c.id, rank_cd.label("text_score"), rank_cd.label("rank_cd"))
        .where(where, _matches(query))
        .order_by(sa.desc("text_score"), memories.c.id)
        .limit(sa.bindparam("candidates"))
    )


def _text_ranking(scope: Scope, where: sa.ColumnElement[bool], websearch: bool) -> sa.Subquery:
    ranking = _websearch_ranking(where) if websearch else _weighted_ranking(scope, where)
    ranked = ranking.subquery("text_ranked")
    order = (ranked.c.text_score.desc(), ranked.c.rank_cd.desc(), ranked.c.id)
    return sa.select(
        ranked.c.id,
        ranked.c.text_score,
        sa.func.row_number().over(order_by=order).label("text_rank"),
        sa.func.max(ranked.c.text_score).over().label("best"),
    ).subquery("text_arm")


def _confident(arm: sa.Subquery) -> sa.Subquery:
    """The text arm's rows scoring at least ``:text_cutoff`` times its best: a prefix of its
    ranking, so the kept rows keep their ranks."""
    cutoff = sa.bindparam("text_cutoff", type_=sa.Float)
    return (
        sa.select(arm.c.id, arm.c.text_score, arm.c.text_rank)
        .where(arm.c.text_score >= cutoff * arm.c.best)
        .subquery("text_confident")
    )


_RESULT = (memories.c.id, memories.c.text, memories.c.metadata, memories.c.created_at, memories.c.updated_at)


def text_statement(scope: Scope, where: sa.ColumnElement[bool], websearch: bool) -> sa.Select[Any]:
    """The text arm alone: the result columns, then text_score, text_rank and the distance to
    the query vector when one is bound (else NULL)."""
    arm = _text_ranking(scope, where, websearch)
    return (
        sa.select(*_RESULT, arm.c.text_score, arm.c.text_rank)
        .join_from(arm, memories, sa.and_(scope.rows(), memories.c.id == arm.c.id))
        .order_by(arm.c.text_rank)
        .limit(sa.bindparam("k"))
    )


def _vector_arm(info: CollectionInfo, where: sa.ColumnElement[bool], exact: bool) -> sa.Subquery:
    # ``+ 0`` keeps PostgreSQL from ordering by the HNSW index: an exact sort of the matches.
    # The column and the sort key are one expression, so each row's distance is computed once.
    distance = distance_expression(info, None) + 0.0 if exact else distance_expression(info, None)
    walk = (
        sa.select(memories.c.id, distance.label("distance"))
        .where(where)
        .order_by(distance)
        .limit(sa.bindparam("candidates"))
        .subquery("vector_walk")
    )
    return sa.select(
        walk.c.id,
        sa.func.row_number().over(order_by=(walk.c.distance, walk.c.id)).label("vector_rank"),
    ).subquery("vector_arm")


def hybrid_statement(
    scope: Scope, where: sa.ColumnElement[bool], websearch: bool, exact: bool, embeddings: bool
) -> sa.Select[Any]:
    """Both arms fused by reciprocal rank: the result columns, then the distance, the fused
    score, the vector rank, the text rank and text score (NULL where an arm missed the row)."""
    info = scope.info
    vector = _vector_arm(info, where, exact)
    text = _confident(_text_ranking(scope, where, websearch))
    rrf_k = sa.bindparam("rrf_k", type_=sa.Float)
    fused_score: sa.ColumnElement[Any] = sa.func.coalesce(
        sa.bindparam("w_vector", type_=sa.Float) / (rrf_k + vector.c.vector_rank), 0.0
    )
    fused_score = fused_score + sa.func.coalesce(
        sa.bindparam("w_text", type_=sa.Float) / (rrf_k + text.c.text_rank), 0.0
    )
    row_id = sa.func.coalesce(vector.c.id, text.c.id)
    # Equal fused scores (a row only the text arm ranks first and one only the vector arm ranks
    # first): the better text rank, then the vector rank, then the id.
    ties = (text.c.text_rank.asc().nulls_last(), vector.c.vector_rank.asc().nulls_last(), row_id)
    fused = (
        sa.select(
            row_id.label("id"),
            fused_score.label("fused"),
            vector.c.vector_rank,
            text.c.text_rank,
            text.c.text_score,
        )
        .select_from(vector.join(text, vector.c.id == text.c.id, full=True))
        .order_by(sa.desc("fused"), *ties)
        .limit(sa.bindparam("k"))
        .subquery("fused")
    )
    vectors = (stored_vectors(info).label("embedding"),) if embeddings else ()
    return (
        sa.select(
            *_RESULT,
            distance_expression(info, None).label("distance"),
            fused.c.fused,
            fused.c.vector_rank,
            fused.c.text_rank,
            fused.c.text_score,
            *vectors,
        )
        .join_from(fused, memories, sa.and_(scope.rows(), memories.c.id == fused.c.id))
        .order_by(
            fused.c.fused.desc(),
            fused.c.text_rank.asc().nulls_last(),
            fused.c.vector_rank.asc().nulls_last(),
            fused.c.id,
        )
    )


@dataclass(frozen=True)
class Fusion:
    """Reciprocal rank fusion's constant, the arms' weights, and the share of the best text
    score a row needs to be ranked by the text arm."""

    rrf_k: float = 60.0
    w_vector: float = 1.0
    w_text: float = 1.0
    text_cutoff: float = 0.67


@dataclass(frozen=True)
class Ranked:
    """One result of a text or hybrid ranking: the memory columns, its score, the arms' view."""

    row: tuple[Any, ...]  # id, text, metadata, created_at, updated_at
    score: float
    distance: float | None
    ranks: dict[str, Any]
    embedding: Any = None


def rank(
    scope: Scope,
    planner: Planner,
    f: Filter,
    text: str,
    vector: npt.NDArray[np.float32] | None,
    k: int,
    fusion: Fusion,
    *,
    exact: bool | None = None,
    ef_search: int | None = None,
    embeddings: bool = False,
) -> Operation[tuple[list[Ranked], SearchPlan]]:
    """The text ranking (``vector`` None) or the hybrid one of the memories matching ``f``."""
    info = scope.info
    websearch = uses_websearch(text)
    how = "websearch_to_tsquery, ts_rank_cd" if websearch else "lexemes OR-ed, weighted by rarity"
    params: dict[str, Any] = {
        **scope.params,
        "ts_config": info.text_search_config,
        "text_query": text,
        "df_cap": DF_CAP,
        "count_cap": DF_CAP + 1,
        "sample_rows": SAMPLE_ROWS,
        "k": k,
    }
    if vector is None:
        query = cached(
            ("text", scope.key, websearch),
            lambda _: text_statement(scope, scope.live(f), websearch),
            f,
            {**params, "candidates": k},
        )
        rows = (yield from execute(query, final=True, settings=search_settings(None)))[0].rows
        found = [
            Ranked(tuple(r[:5]), float(r[5]), None, {"text_rank": int(r[6]), "text_score": float(r[5])})
            for r in rows
        ]
        return found, SearchPlan("text", f"full text ({how})", None)
    candidates = max(2 * k, CANDIDATES_MIN)
    is_exact, ef, why = yield from vector_plan(scope, planner, f, candidates, exact, ef_search)
    params.update(
        {
            QUERY_VECTOR: QueryVector(vector, info.index_type == "halfvec"),
            "candidates": candidates,
            "rrf_k": float(fusion.rrf_k),
            "w_vector": float(fusion.w_vector),
            "w_text": float(fusion.w_text),
            "text_cutoff": float(fusion.text_cutoff),
        }
    )

    def run(exact_arm: bool, ef_arm: int | None) -> Operation[list[tuple[Any, ...]]]:
        query = cached(
            ("hybrid", scope.key, websearch, exact_arm, embeddings),
            lambda _: hybrid_statement(scope, scope.live(f), websearch, exact_arm, embeddings),
            f,
            params,
        )
        settings = search_settings(None if exact_arm else ef_arm)
        return (yield from execute(query, final=True, settings=settings))[0].rows

    rows = yield from run(is_exact, ef)
    short = len(rows)
    reason = (
        f"reciprocal rank fusion (k {fusion.rrf_k:g}) of the vector arm ({why}) and full text ({how}, "
        f"rows scoring at least {fusion.text_cutoff:g} x the best)"
    )
    if len(rows) < k and not is_exact:
        # The walk came back short: only an exact scan knows whether more rows match.
        rows = yield from run(True, None)
        reason += f"; the walk returned {short} < {k} rows: exact scan"
        is_exact = True
    found = []
    for r in rows:
        distance = float(r[5])
        ranks = {
            "fused": float(r[6]),
            "vector_rank": None if r[7] is None else int(r[7]),
            "text_rank": None if r[8] is None else int(r[8]),
            "text_score": None if r[9] is None else float(r[9]),
        }
        found.append(Ranked(tuple(r[:5]), float(r[6]), distance, ranks, r[10] if embeddings else None))
    return found, SearchPlan("hybrid", reason, None, None if is_exact else ef)
