"""mem0 imported for the tests: telemetry off and its home in a temp dir, once per session.

mem0 reads ``MEM0_TELEMETRY`` and ``MEM0_DIR`` when it is imported (and creates its home then), so
they are set before the first import. Its ``langchain`` vector-store provider imports
``langchain_community`` (installed by the test command, as users of that provider install it).
"""

from __future__ import annotations

import importlib
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
        setup = importlib.import_module("mem0.memory.setup")
        telemetry = importlib.import_module("mem0.memory.telemetry")
        importlib.import_module("mem0.configs.vector_stores.langchain")
        importlib.import_module("mem0.vector_stores.langchain")
    # Read at import: had mem0 been imported before, with other settings, this would say so.
    assert telemetry.MEM0_TELEMETRY is False
    assert Path(setup.mem0_dir) == home
    _home.append(home)
    return home
