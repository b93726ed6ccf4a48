"""mem0 imported for the tests: telemetry off and its home in a temp dir, once per session.

mem0 reads ``MEM0_TELEMETRY`` and ``MEM0_DIR`` when it is imported (and creates its home then), so
they are set before the first import. Its ``langchain`` vector-store provider imports
``VectorStore`` from ``langchain_community.vectorstores``, which re-exports
``langchain_core.vectorstores.VectorStore``; when langchain-community is not installed, that name
is given from langchain-core under the same import path while the provider's modules are
imported, so mem0's own code runs unchanged.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest

_home: list[Path] = []


def import_mem0_offline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Import mem0 (once) as described above; returns its home directory."""
    if _home:
        return _home[0]
    home = tmp_path_factory.mktemp("mem0-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEM0_TELEMETRY", "False")
        patch.setenv("MEM0_DIR", str(home))
        if importlib.util.find_spec("langchain_community") is None:
            from langchain_core.vectorstores import VectorStore

            vectorstores = types.ModuleType("langchain_community.vectorstores")
            vectorstores.VectorStore = VectorStore  # type: ignore[attr-defined]
            patch.setitem(sys.modules, "langchain_community", types.ModuleType("langchain_community"))
            patch.setitem(sys.modules, "langchain_community.vectorstores", vectorstores)
        setup = importlib.import_module("mem0.memory.setup")
        telemetry = importlib.import_module("mem0.memory.telemetry")
        importlib.import_module("mem0.configs.vector_stores.langchain")
        importlib.import_module("mem0.vector_stores.langchain")
    # Read at import: had mem0 been imported before, with other settings, this would say so.
    assert telemetry.MEM0_TELEMETRY is False
    assert Path(setup.mem0_dir) == home
    _home.append(home)
    return home
