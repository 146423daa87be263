"""How runs look: one line per finished instance off a terminal, a live bar on one."""

from __future__ import annotations

import io
import re
import sys

import pytest

from ophelia_db.cli.render.run import progress_display
from ophelia_db.results import InstanceResult
from tests.helpers import HEAD, REVISIONS, run_cli, write_fleet


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.pg
def test_plain_output_is_one_line_per_instance_then_a_summary(tmp_path, fleet_dbs):
    hub, instances = fleet_dbs(2)
    fleet = write_fleet(tmp_path, hub, instances)
    done = run_cli(["upgrade", "--all", "--fleet", str(fleet)])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sorted(line.split()[0] for line in lines[:-1]) == ["hub", "inst1", "inst2"]
    assert all(f" ok base -> {HEAD} [{', '.join(REVISIONS)}] " in line for line in lines[:-1])
    assert re.fullmatch(r"3 instance\(s\): 3 ok; hub report ok; run [0-9]{8}-[0-9]{6}-[0-9a-f]{6}", lines[-1])
    assert done.stderr == ""


def test_terminal_progress_counts_instances_and_failures(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    with progress_display(3, stream=Terminal()) as progress:
        assert not progress.streamed
        progress.finished(InstanceResult(name="a", role="instance", result="ok"))
        progress.finished(InstanceResult(name="b", role="instance", result="failed", exit_code=5))
        assert progress.failures == 1
        assert progress._bar is not None
        assert progress._bar.tasks[0].completed == 2


def test_json_mode_prints_no_progress():
    stream = io.StringIO()
    with progress_display(2, enabled=False, stream=stream) as progress:
        progress.finished(InstanceResult(name="a", role="instance", result="ok"))
    assert stream.getvalue() == ""
