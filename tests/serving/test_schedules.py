"""Retraining on a schedule (serving/schedules.py): the local plane starts `shepherd retrain` when a schedule is
due, one run per model at a time whatever the schedule says, a run with nothing new says so, and the
schedules survive a restarted plane."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pipelines.direct import train_and_register
from serving.backends import LocalBackend
from serving.inference_service import build_inference_service
from serving.schedules import Schedules, describe, parse_duration
from tests.conftest import REPO
from tests.support.plane_processes import running_plane
from tests.support.waiting import wait_for


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("15m", 900), ("24h", 86400), (" 7d ", 604800)])
def test_durations_read_as_people_write_them(text, seconds):
    assert parse_duration(text) == seconds
    assert parse_duration(describe(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "0s", "10", "1w", "-5m", "1.5h"])
def test_a_duration_that_is_not_one_names_the_forms(text):
    with pytest.raises(ValueError, match="30s, 15m, 24h or 7d"):
        parse_duration(text)


def test_a_due_schedule_runs_once_and_missed_runs_are_not_made_up(tmp_path):
    schedules = Schedules(tmp_path / "schedules.json")
    schedules.set("churn", 60, now=1_000.0)
    assert schedules.due(1_059.0) == []
    assert [s.model for s in schedules.due(5_000.0)] == ["churn"]  # 65 periods missed: one run
    assert schedules.due(5_059.0) == []
    reopened = Schedules(tmp_path / "schedules.json")  # what a restarted plane reads
    assert [(s.model, s.next_at) for s in reopened.all()] == [("churn", 5_060.0)]
    assert reopened.delete("churn") and not reopened.delete("churn")
    assert Schedules(tmp_path / "schedules.json").all() == []


def _cli(home, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=REPO,
        env={**os.environ, "SHEPHERD_HOME": str(home), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_plane_retrains_on_schedule_one_run_at_a_time(tmp_path, churn_spec, churn_frame):
    home = tmp_path / "home"
    home.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    assert train_and_register(churn_spec, churn_frame, uri, home).alias == "champion"
    with running_plane(home, uri) as plane:
        LocalBackend(plane.url).apply(build_inference_service(churn_spec, "1"))
        refused = _cli(home, "schedule", "set", "churn", "--every", "soon")
        assert refused.returncode == 2 and "--every: 'soon' is not a duration" in refused.stdout + refused.stderr
        unknown = _cli(home, "schedule", "set", "credit", "--every", "2s")
        assert unknown.returncode == 9 and "no InferenceService models/credit" in unknown.stdout + unknown.stderr
        assert _cli(home, "schedule", "set", "churn", "--every", "2s").returncode == 0

        logs = home / "retrain"
        wait_for(lambda: len(list(logs.glob("churn-*.log"))) == 1, seconds=30, what="the first scheduled run")
        time.sleep(5)  # two more ticks are due meanwhile: the first run is still going, so nothing starts
        first = sorted(logs.glob("churn-*.log"))
        assert len(first) == 1
        wait_for(lambda: "done in" in first[0].read_text(), seconds=240, what="the first run to finish")
        assert "registered churn version 2" in first[0].read_text()

        def second_run_done():
            runs = sorted(logs.glob("churn-*.log"))
            return len(runs) >= 2 and "nothing to train" in runs[1].read_text() and runs[1]

        second = wait_for(second_run_done, seconds=120, what="a second run that finds nothing new")
        assert "no new labelled rows since version 2" in second.read_text()
        assert "schedule: every 2s" in second.read_text()
        listed = _cli(home, "schedule", "list")
        assert "models/churn" in listed.stdout and "2s" in listed.stdout
        assert _cli(home, "schedule", "delete", "churn").returncode == 0
        history = _cli(home, "history", "churn")
        assert "schedule: every 2s" in history.stdout, history.stdout


def test_triggers_at_the_same_moment_start_one_run(tmp_path, churn_spec, churn_frame):
    """Three `shepherd retrain` processes at once (a schedule's tick beside an alert's, as on a loaded
    machine where each takes seconds to start): one run starts, the others find it and start nothing."""
    import signal

    home = tmp_path / "home"
    home.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    assert train_and_register(churn_spec, churn_frame, uri, home).alias == "champion"
    command = [sys.executable, "-m", "pipelines.cli", "retrain", "churn", "--home", str(home), "--tracking-uri", uri]
    env = {**os.environ, "SHEPHERD_HOME": str(home), "COLUMNS": "200"}
    triggers = [
        subprocess.Popen(
            [*command, "--reason", f"trigger {n}"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for n in range(3)
    ]
    said = [trigger.communicate(timeout=180)[0].decode() for trigger in triggers]
    run_pid = int((home / "retrain" / "churn.pid").read_text())
    try:
        assert all(trigger.returncode == 0 for trigger in triggers), said
        assert sum("local run pid" in s for s in said) == 1, said
        assert sum("already" in s for s in said) == 2, said
        assert len(list((home / "retrain").glob("churn-*.log"))) == 1
    finally:
        os.killpg(run_pid, signal.SIGTERM)  # the run has its own session: it and its steps
