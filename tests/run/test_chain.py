"""The revision chain: the fast reader and Alembic's own ScriptDirectory agree, and
`alembic revision --rev-id` writes files shaped like the committed ones. No database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ophelia_db.errors import IntegrityRefusal
from ophelia_db.run.chain import Chain, ChainSpec, _read_linear, _read_with_alembic
from tests.helpers import ROOT, run_cli

SHIPPED = ROOT / "alembic" / "versions"
TEST_CHAINS = sorted(p for p in (ROOT / "tests" / "chains").iterdir() if p.is_dir())
LOCATIONS = [str(SHIPPED)] + [os.pathsep.join([str(SHIPPED), str(extra)]) for extra in TEST_CHAINS]


@pytest.mark.parametrize("locations", LOCATIONS, ids=["shipped"] + [p.name for p in TEST_CHAINS])
def test_fast_reader_and_script_directory_agree(locations: str) -> None:
    spec = ChainSpec(alembic_ini=ROOT / "alembic.ini", version_locations=locations)
    fast = _read_linear(spec)
    assert fast is not None, "a linear chain must take the fast path"
    slow = _read_with_alembic(spec)
    assert [r.id for r in fast] == [r.id for r in slow]
    assert [r.down_revision for r in fast] == [r.down_revision for r in slow]
    assert [r.path.resolve() for r in fast] == [r.path.resolve() for r in slow]
    assert [(r.name, r.checksum, r.lock_timeout, r.statement_timeout) for r in fast] == [
        (r.name, r.checksum, r.lock_timeout, r.statement_timeout) for r in slow
    ]
    assert Chain(spec, fast).head == Chain(spec, slow).head == fast[-1].id


def test_alembic_revision_rev_id_writes_a_file_like_the_committed_ones(tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    versions.mkdir()
    for path in SHIPPED.glob("*.py"):
        (versions / path.name).write_bytes(path.read_bytes())
    ini = tmp_path / "alembic.ini"
    ini.write_text(
        (ROOT / "alembic.ini")
        .read_text(encoding="utf-8")
        .replace("%(here)s/alembic/versions", str(versions))
        .replace("%(here)s/alembic", str(ROOT / "alembic")),
        encoding="utf-8",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ini),
         "revision", "--rev-id", "0006", "-m", "add something"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (created,) = versions.glob("0006_*.py")
    assert created.name == "0006_add_something.py"
    text = created.read_text(encoding="utf-8")
    assert 'revision: str = "0006"' in text
    assert 'down_revision: str | Sequence[str] | None = "0005"' in text
    chain = Chain.load(ChainSpec(alembic_ini=ini))
    assert chain.head == "0006" and chain.get("0006").name == "add something"


def test_a_deleted_revision_file_is_named_not_mistaken_for_two_heads(tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    versions.mkdir()
    for path in SHIPPED.glob("0*.py"):
        (versions / path.name).write_bytes(path.read_bytes())
    # 0105 was applied, then its file deleted; 0106 still points to it.
    (versions / "0106_after.py").write_text(
        '"""After."""\nrevision = "0106"\ndown_revision = "0105"\n\n\ndef upgrade():\n    pass\n',
        encoding="utf-8",
    )
    with pytest.raises(IntegrityRefusal, match=r"revision 0106 \(0106_after.py\) points to revision 0105"):
        Chain.load(ChainSpec(alembic_ini=ROOT / "alembic.ini", version_locations=str(versions)))
    done = run_cli(["lint", "--no-squawk"], locations=str(versions))
    assert done.returncode == 4, done.stderr
    assert done.stderr.count("\n") == 1 and "which no file defines" in done.stderr
    assert "merge" not in done.stderr
