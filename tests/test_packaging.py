"""The built wheel carries its migrations: install it in a fresh virtualenv and use it elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installs_and_migrates_and_runs_the_demo_outside_the_repo(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
    )
    wheel = next(dist.glob("memorix_pg-*.whl"))

    # A fresh virtualenv; the heavy dependencies (torch, …) are borrowed from ours through a
    # path file instead of being downloaded again, and memorix-pg itself comes from the wheel.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--quiet", str(wheel)], check=True)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "MEMORIX_DATA_DIR": str(tmp_path / "data")}
    env.pop("MEMORIX_DATABASE_URL", None)
    cli = str(env_dir / "bin" / "memorix-pg")
    try:
        where = subprocess.run(
            [str(python), "-c", "import memorix_pg.migrate as m; print(m.migrations_dir())"],
            cwd=outside,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        assert where.startswith(site), f"migrations found at {where}, not inside the installed wheel"

        migrated = subprocess.run([cli, "migrate"], cwd=outside, env=env, capture_output=True, text=True)
        assert migrated.returncode == 0, migrated.stderr
        assert "is at revision" in migrated.stdout

        demo = subprocess.run(
            [cli, "demo"], cwd=outside, env=env, capture_output=True, text=True, timeout=600
        )
        assert demo.returncode == 0, demo.stderr[-3000:]
        assert "6. stats" in demo.stdout
    finally:
        subprocess.run([cli, "server", "stop"], cwd=outside, env=env, capture_output=True)
