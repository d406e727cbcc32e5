"""The `shepherd` CLI: help that teaches, and every user error a message with a non-zero exit."""

from __future__ import annotations

from typer.testing import CliRunner

from pipelines.cli import app
from tests.conftest import CHURN_SPEC

runner = CliRunner()


def _invoke(*args: str, env: dict | None = None):
    result = runner.invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})
    assert "Traceback" not in result.output
    return result


def test_help_lists_the_commands_and_an_example():
    result = _invoke("--help")
    assert result.exit_code == 0
    for command in ("run", "compile", "submit", "models", "reproduce"):
        assert command in result.output
    assert "shepherd run" in result.output
    run_help = _invoke("run", "--help").output
    assert "Unchanged data, spec and code train" in run_help and "--spec" in run_help


def test_missing_spec_file(tmp_path):
    result = _invoke("run", "--spec", str(tmp_path / "nope.yaml"), "--home", str(tmp_path))
    assert result.exit_code == 2
    assert "does not exist" in result.output and "hint:" in result.output


def test_malformed_spec_names_the_field(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(CHURN_SPEC.read_text().replace("algorithm: logistic_regression", "algorithm: deep_magic"))
    result = _invoke("run", "--spec", str(spec), "--home", str(tmp_path))
    assert result.exit_code == 2
    assert "training.algorithm" in result.output


def test_models_on_an_empty_registry_says_how_to_get_one(tmp_path):
    result = _invoke("models", "--home", str(tmp_path))
    assert result.exit_code == 0
    assert "no registered versions of 'churn'" in result.output and "shepherd run" in result.output


def test_reproduce_unknown_version(tmp_path):
    result = _invoke("reproduce", "42", "--home", str(tmp_path))
    assert result.exit_code == 5
    assert "has no version '42'" in result.output


def test_submit_to_an_unreachable_server(tmp_path):
    result = _invoke("submit", "--host", "http://127.0.0.1:9", "--tracking-uri", "http://mlflow:5000")
    assert result.exit_code == 6
    assert "could not submit to the KFP server at http://127.0.0.1:9" in result.output


def test_compile_writes_the_pipeline(tmp_path):
    out = tmp_path / "p.yaml"
    result = _invoke("compile", "--output", str(out))
    assert result.exit_code == 0
    assert "deploy-op" in out.read_text()


def test_status_and_traffic_without_a_plane_say_how_to_start_one(tmp_path):
    for command in ("status", "traffic"):
        result = _invoke(command, "--home", str(tmp_path))
        assert result.exit_code == 1
        assert "`shepherd up` starts one" in result.output


def test_param_override_must_be_key_value(tmp_path):
    result = _invoke("run", "--param", "C", "--home", str(tmp_path))
    assert result.exit_code == 2
    assert "--param 'C': expected KEY=VALUE" in result.output
    result = _invoke("run", "--param", "depth=3", "--home", str(tmp_path))  # refused before any step runs
    assert result.exit_code == 2
    assert "training.params ['C', 'depth', 'max_iter'] do not fit logistic_regression" in result.output
    assert not (tmp_path / "pipeline-root").exists()


def test_rollout_help_teaches_the_commands():
    result = _invoke("rollout", "--help")
    assert result.exit_code == 0
    for command in ("watch", "rollback", "pause", "resume", "promote", "fault", "controller"):
        assert command in result.output
    assert "[default: every canary]" in _invoke("rollout", "watch", "--help").output  # brackets shown literally


def test_rollout_commands_without_a_plane_say_how_to_start_one(tmp_path):
    for args in (
        ("rollout", "rollback", "churn"),
        ("rollout", "watch"),
        ("history", "churn"),
        ("drift", "check", "churn"),
    ):
        result = _invoke(*args, "--home", str(tmp_path))
        if args[0] == "history":  # the registry alone answers; an empty one has nothing for churn
            assert result.exit_code == 1 and "nothing recorded for 'churn'" in result.output
            continue
        assert result.exit_code == 9, (args, result.output)
        assert "shepherd up" in result.output


def test_bad_options_are_refused_before_anything_runs(tmp_path):
    fault = _invoke("rollout", "fault", "churn", "--error-rate", "1.5", "--home", str(tmp_path))
    assert fault.exit_code == 2 and "--error-rate must be within 0..1" in fault.output
    controller = _invoke("rollout", "controller", "--metrics", "graphite", "--port", "0")
    assert controller.exit_code == 2 and "expected prometheus or scrape" in controller.output
    no_url = _invoke("rollout", "controller", "--port", "0", env={"SHEPHERD_PROMETHEUS_URL": ""})
    assert no_url.exit_code == 2 and "--prometheus-url" in no_url.output
