"""``list``: paging through a collection in a stable order, with embeddings when asked."""

from __future__ import annotations

import numpy as np
import pytest

from memorix_pg import InvalidInput
from tests.support.helpers import unit_vectors


def test_cursor_paging_visits_every_memory_once_in_order(make_api) -> None:
    api = make_api("paging", embedder="hash-16")
    vectors = unit_vectors(250, dim=16, seed=9)
    ids = api.store_batch([f"m{i}" for i in range(250)], [{"i": i} for i in range(250)], embeddings=vectors)
    for order, expected in (("oldest", ids), ("newest", ids[::-1])):
        seen, cursor = [], None
        while True:
            page = api.list(limit=64, cursor=cursor, order=order)
            seen += [m.id for m in page]
            if len(page) < 64:
                break
            cursor = page[-1].id
        assert seen == expected
    assert [m.id for m in api.list({"i": {"$lt": 10}}, limit=3, offset=2, order="oldest")] == ids[2:5]


def test_include_embeddings_returns_the_stored_vectors(make_api) -> None:
    api = make_api("with_vectors", embedder="hash-16")
    vectors = unit_vectors(5, dim=16, seed=2)
    ids = api.store_batch([f"v{i}" for i in range(5)], embeddings=vectors)
    listed = api.list(order="oldest", include_embeddings=True)
    assert [m.id for m in listed] == ids
    np.testing.assert_allclose(np.stack([m.embedding for m in listed]), vectors, rtol=1e-6)
    assert all(m.embedding is None for m in api.list())


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"order": "random"}, "order"),
        ({"limit": 0}, "limit"),
        ({"offset": -1}, "offset"),
        ({"cursor": ""}, "cursor"),
        ({"cursor": 5}, "cursor"),
    ],
)
def test_bad_paging_arguments_are_named(make_api, kwargs, fragment) -> None:
    api = make_api("bad_paging")
    with pytest.raises(InvalidInput, match=fragment):
        api.list(**kwargs)


def test_a_cursor_that_names_no_memory_is_an_error_not_an_empty_page(make_api) -> None:
    api = make_api("cursor_gone")
    ids = api.store_batch(["a", "b", "c"], ids=["k1", "k2", "k3"])
    assert [m.id for m in api.list(limit=2, order="oldest")] == ids[:2]
    assert [m.id for m in api.list(limit=2, cursor="k2", order="oldest")] == ["k3"]
    assert api.list(limit=2, cursor="k3", order="oldest") == []  # the end: k3 exists
    api.delete("k2")
    with pytest.raises(InvalidInput, match="cursor 'k2' is not the id of a memory"):
        api.list(limit=2, cursor="k2", order="oldest")
    with pytest.raises(InvalidInput, match="cursor 'nowhere'"):
        api.list(cursor="nowhere")
