"""The Dockerfile: hadolint finds nothing at warning level or above (and does catch a bad file), it
installs every package the project declares, and the one image reference agrees everywhere —
components/platform.py's PLATFORM_IMAGE, the chart's values and appVersion, the Dockerfile's labels
and user. (No Docker engine here: the image itself is not built by the tests.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib

import yaml

from tests.conftest import REPO
from tests.support import tools

DOCKERFILE = REPO / "Dockerfile"
CHART = REPO / "helm" / "shepherd"


def hadolint(path) -> tuple[int, list[dict]]:
    result = tools.run("hadolint", "--no-color", "--format", "json", "--failure-threshold", "warning", str(path))
    return result.returncode, json.loads(result.stdout or "[]")


def test_hadolint_finds_nothing_at_warning_or_above():
    code, findings = hadolint(DOCKERFILE)
    serious = [f for f in findings if f["level"] in {"error", "warning"}]
    assert code == 0 and not serious, json.dumps(findings, indent=1)


def test_hadolint_does_catch_a_careless_dockerfile(tmp_path):
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install requests\n")
    code, findings = hadolint(careless)
    assert code != 0
    assert {"DL3007", "DL3008", "DL3013"} <= {f["code"] for f in findings}, findings


def _platform_image_default() -> str:
    """PLATFORM_IMAGE as the code defines it, without a SHEPHERD_IMAGE override from this environment."""
    env = {k: v for k, v in os.environ.items() if k != "SHEPHERD_IMAGE"}
    result = subprocess.run(
        [sys.executable, "-c", "from components.platform import PLATFORM_IMAGE; print(PLATFORM_IMAGE)"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        check=True,
    )
    return result.stdout.strip()


def test_chart_image_is_the_platform_image():
    image = yaml.safe_load((CHART / "values.yaml").read_text())["image"]
    assert f"{image['repository']}:{image['tag']}" == _platform_image_default()


def test_versions_agree():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version
    assert yaml.safe_load((CHART / "values.yaml").read_text())["image"]["tag"] == version
    assert re.search(rf"^ARG VERSION={re.escape(version)}$", DOCKERFILE.read_text(), flags=re.MULTILINE)


def test_dockerfile_installs_every_declared_package_pinned():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    text = DOCKERFILE.read_text()
    dockerignore = (REPO / ".dockerignore").read_text().splitlines()
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    assert packages
    for package in packages:
        assert re.search(rf"^COPY {package} \./{package}$", text, flags=re.MULTILINE), f"{package} not copied"
        assert f"!{package}/" in dockerignore, f"{package} excluded from the build context"
    # Dependencies come from pyproject's own list, every one pinned by constraints.txt.
    assert "pip install --no-cache-dir -c constraints.txt -r requirements.txt" in text
    assert "--no-deps -c constraints.txt ." in text
    constraints = {
        line.split("==")[0].lower().replace("_", "-")
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line
    }
    for requirement in pyproject["project"]["dependencies"]:
        name = re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in constraints, f"{name} is not pinned by constraints.txt"


def test_image_user_matches_the_charts_security_context():
    text = DOCKERFILE.read_text()
    assert re.search(r"^USER 10001:10001$", text, flags=re.MULTILINE)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["securityContext"]["runAsUser"] == values["podSecurityContext"]["runAsUser"] == 10001
    # Multi-stage: the runtime stage starts from the same pinned base and only copies the venv.
    stages = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert len(stages) == 2 and set(stages) == {"${PYTHON_IMAGE}"}
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm$", text, flags=re.MULTILINE)
    assert "COPY --from=builder /opt/shepherd /opt/shepherd" in text
