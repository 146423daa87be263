"""The render cache: a chain rendered once is read back by later runs without Alembic, never stale.

Each test works on its own copy of the shipped chain, so that it owns the
copy's ``__pycache__``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ophelia_db.run.chain import ChainSpec, source_files
from tests.helpers import REVISIONS, ROOT, MakeDatabase, run_cli, scalar, write_fleet

RENDER = """
import json, sys
from pathlib import Path
from ophelia_db.run import batch
from ophelia_db.run.chain import Chain, ChainSpec
chain = Chain.load(ChainSpec(alembic_ini=Path(sys.argv[1])))
found = batch.rendered(chain, sys.argv[2] if len(sys.argv) > 2 else None, chain.head)
print(json.dumps({
    "imported": sorted(name for name in ("alembic", "sqlalchemy") if name in sys.modules),
    "revisions": {revision: list(each.statements) for revision, each in found.items()},
}))
"""
EDITED = "CREATE TABLE public.edited_after_rendering (id int)"


def _chain_copy(directory: Path) -> Path:
    shutil.copy(ROOT / "alembic.ini", directory / "alembic.ini")
    shutil.copytree(ROOT / "alembic", directory / "alembic", ignore=shutil.ignore_patterns("__pycache__"))
    return directory / "alembic.ini"


def _render_in_a_new_process(alembic_ini: Path, start: str | None = None) -> dict[str, Any]:
    command = [sys.executable, "-c", RENDER, str(alembic_ini), *([start] if start else [])]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout)


def _edit_last_revision(alembic_ini: Path) -> None:
    last = sorted((alembic_ini.parent / "alembic" / "versions").glob(f"{REVISIONS[-1]}_*.py"))[0]
    text, opening = last.read_text(), "def upgrade() -> None:\n"
    assert opening in text
    last.write_text(text.replace(opening, f'{opening}    op.execute("{EDITED}")\n'))


def test_a_rendered_chain_is_read_back_by_the_next_run_without_importing_alembic(tmp_path: Path) -> None:
    alembic_ini = _chain_copy(tmp_path)
    first = _render_in_a_new_process(alembic_ini)
    assert first["imported"] == ["alembic", "sqlalchemy"]
    assert sorted(first["revisions"]) == REVISIONS
    second = _render_in_a_new_process(alembic_ini)
    assert second["imported"] == []
    assert second["revisions"] == first["revisions"]


def test_an_edited_revision_or_env_py_is_rendered_again(tmp_path: Path) -> None:
    alembic_ini = _chain_copy(tmp_path)
    first = _render_in_a_new_process(alembic_ini)
    _edit_last_revision(alembic_ini)
    edited = _render_in_a_new_process(alembic_ini)
    assert edited["imported"] == ["alembic", "sqlalchemy"]
    assert edited["revisions"][REVISIONS[-1]][0] == EDITED + ";"
    assert {k: v for k, v in edited["revisions"].items() if k != REVISIONS[-1]} == {
        k: v for k, v in first["revisions"].items() if k != REVISIONS[-1]
    }
    env_py = tmp_path / "alembic" / "env.py"
    env_py.write_text(env_py.read_text() + "\n# a comment changes nothing rendered, and still counts\n")
    assert _render_in_a_new_process(alembic_ini)["imported"] == ["alembic", "sqlalchemy"]
    assert _render_in_a_new_process(alembic_ini)["imported"] == []


@pytest.mark.parametrize("damage", ["garbage", "another key", "statements not strings"])
def test_a_damaged_cache_file_is_rendered_again_and_replaced(tmp_path: Path, damage: str) -> None:
    alembic_ini = _chain_copy(tmp_path)
    first = _render_in_a_new_process(alembic_ini)
    (cached,) = (tmp_path / "alembic" / "versions" / "__pycache__").glob("ophelia-rendered.*.json")
    stored = json.loads(cached.read_text())
    cached.write_text(
        {
            "garbage": "{not json",
            "another key": json.dumps({**stored, "key": "0" * 64, "statements": ["DROP TABLE x;"]}),
            "statements not strings": json.dumps({**stored, "statements": [1, 2]}),
        }[damage]
    )
    again = _render_in_a_new_process(alembic_ini)
    assert again["imported"] == ["alembic", "sqlalchemy"]
    assert again["revisions"] == first["revisions"]
    assert _render_in_a_new_process(alembic_ini)["imported"] == []


def test_a_cache_that_cannot_be_written_costs_only_the_rendering(tmp_path: Path) -> None:
    alembic_ini = _chain_copy(tmp_path)
    # A file where the cache's folder would go: mkdir fails, even for root.
    (tmp_path / "alembic" / "versions" / "__pycache__").write_text("not a folder")
    first = _render_in_a_new_process(alembic_ini)
    second = _render_in_a_new_process(alembic_ini)
    assert first["imported"] == second["imported"] == ["alembic", "sqlalchemy"]
    assert second["revisions"] == first["revisions"] and sorted(first["revisions"]) == REVISIONS


@pytest.mark.pg
def test_an_upgrade_after_a_revision_is_edited_runs_the_edited_sql(
    tmp_path: Path, make_database: MakeDatabase
) -> None:
    alembic_ini = _chain_copy(tmp_path)
    env = {"OPHELIA_ALEMBIC_INI": str(alembic_ini)}
    for run in ("first", "edited"):
        if run == "edited":
            _edit_last_revision(alembic_ini)
        hub, instance = make_database("hub"), make_database("inst")
        folder = tmp_path / run
        folder.mkdir()
        done = run_cli(["upgrade", "--all"], fleet=write_fleet(folder, hub, {"a": instance}), env=env)
        assert done.returncode == 0, done.stderr
        created = "SELECT to_regclass('public.edited_after_rendering') IS NOT NULL"
        assert scalar(instance, created) is scalar(hub, created) is (run == "edited")


def test_an_empty_range_renders_nothing_and_imports_nothing(tmp_path: Path) -> None:
    alembic_ini = _chain_copy(tmp_path)
    assert _render_in_a_new_process(alembic_ini, REVISIONS[-1]) == {"imported": [], "revisions": {}}
    assert not (tmp_path / "alembic" / "versions" / "__pycache__").exists()


def test_the_key_reads_the_folders_alembic_reads_not_those_below(tmp_path: Path) -> None:
    # A script_location with a large tree below it (a virtualenv, say) must not be walked, while
    # a file beside env.py (a helper a revision imports) counts.
    alembic_ini = _chain_copy(tmp_path)
    below = tmp_path / "alembic" / "node_modules" / "deep"
    below.mkdir(parents=True)
    (below / "big.js").write_text("x")
    files = source_files(ChainSpec(alembic_ini=alembic_ini))
    assert below / "big.js" not in files
    assert tmp_path / "alembic" / "env.py" in files
    assert sorted(p.name for p in files if p.parent.name == "versions") == sorted(
        p.name for p in (tmp_path / "alembic" / "versions").glob("*.py")
    )
    _render_in_a_new_process(alembic_ini)
    (tmp_path / "alembic" / "helpers.py").write_text("# a helper beside env.py\n")
    assert _render_in_a_new_process(alembic_ini)["imported"] == ["alembic", "sqlalchemy"]
