"""terraform/: the module contract (four files per module and example, every variable typed and
described, versions pinned, examples calling the module with inputs it declares), the chart values it
sets exist in the charts it installs, and the real tools accept it: OpenTofu (`fmt -check`, and loading
every configuration) and checkov. Providers cannot be downloaded here, so `tofu validate` is not run
(terraform/README.md)."""

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

TERRAFORM = REPO / "terraform"
MODULE = TERRAFORM / "modules" / "shepherd-stack"
EXAMPLES = sorted(p for p in (TERRAFORM / "examples").iterdir() if p.is_dir())
ROOTS = [MODULE, *EXAMPLES]
FOUR_FILES = {"main.tf", "variables.tf", "outputs.tf", "versions.tf"}


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI runs every test)")
    pytest.skip(f"{reason}; install Go (https://go.dev/dl) and Python 3 with venv: scripts/infra-tools.sh fetches it")


@cache
def infra_tool(name: str) -> Path:
    """A pinned tool from scripts/infra-tools.sh (tofu, python-hcl2; cached outside the repo). helm and
    checkov come from scripts/go-tools.sh through tests.support.tools."""
    result = subprocess.run(
        [str(REPO / "scripts" / "infra-tools.sh"), name], capture_output=True, text=True, timeout=3600
    )
    if result.returncode != 0:
        _unavailable(f"scripts/infra-tools.sh {name} failed: {result.stderr.strip()[-1000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def unquote(value):
    """python-hcl2 keeps HCL string literals quoted ('"x"'); expressions stay '${...}'."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


@cache
def parsed() -> dict[str, dict]:
    """Every .tf file under terraform/, parsed by python-hcl2 (in its own cached venv)."""
    script = (
        "import hcl2, json, pathlib, sys\n"
        "root = pathlib.Path(sys.argv[1])\n"
        "print(json.dumps({str(p.relative_to(root)): hcl2.load(p.open()) for p in sorted(root.rglob('*.tf'))}))\n"
    )
    result = subprocess.run(
        [str(infra_tool("hcl2-python")), "-c", script, str(TERRAFORM)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"python-hcl2 could not parse terraform/: {result.stderr[-2000:]}"
    return json.loads(result.stdout)


def blocks(directory: Path, kind: str) -> dict[str, dict]:
    """name -> body of every `kind "name" {}` block in one directory's .tf files."""
    found = {}
    for path, doc in parsed().items():
        if (TERRAFORM / path).parent == directory:
            for block in doc.get(kind, []):
                found.update({unquote(name): body for name, body in block.items()})
    return found


def resources(directory: Path, type_: str) -> dict[str, dict]:
    found = {}
    for path, doc in parsed().items():
        if (TERRAFORM / path).parent == directory:
            for block in doc.get("resource", []):
                for rtype, named in block.items():
                    if unquote(rtype) == type_:
                        found.update({unquote(n): body for n, body in named.items()})
    return found


def required_providers(directory: Path) -> tuple[str | None, dict[str, dict]]:
    doc = parsed()[str((directory / "versions.tf").relative_to(TERRAFORM))]
    terraform = doc["terraform"][0]
    providers = {}
    for entry in terraform.get("required_providers", []):
        providers.update({k: v for k, v in entry.items() if not k.startswith("__")})
    return unquote(terraform.get("required_version")), providers


def variable_default(name: str):
    return unquote(blocks(MODULE, "variable")[name].get("default"))


def resolve(expression: str):
    """A `${var.x}` expression as the module's default for x (enough for the chart checks)."""
    match = re.fullmatch(r"\$\{var\.(\w+)\}", str(expression))
    return variable_default(match.group(1)) if match else unquote(expression)


# --------------------------------------------------------------------------------------------------
# The contract
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("directory", ROOTS, ids=lambda p: str(p.relative_to(TERRAFORM)))
def test_every_module_and_example_has_the_four_files(directory):
    assert {p.name for p in directory.glob("*.tf")} >= FOUR_FILES
    assert all(str((directory / f).relative_to(TERRAFORM)) in parsed() for f in FOUR_FILES)


@pytest.mark.parametrize("directory", ROOTS, ids=lambda p: str(p.relative_to(TERRAFORM)))
def test_every_variable_is_typed_and_described_and_every_output_described(directory):
    variables = blocks(directory, "variable")
    for name, body in variables.items():
        assert body.get("type"), f"variable {name} has no type"
        assert len(unquote(body.get("description", ""))) >= 10, f"variable {name} has no description"
    for name, body in blocks(directory, "output").items():
        assert len(unquote(body.get("description", ""))) >= 10, f"output {name} has no description"
    assert blocks(directory, "output"), "a module or example without outputs"


def test_versions_and_names_are_validated_inputs_with_defaults():
    variables = blocks(MODULE, "variable")
    versions = [n for n in variables if n.endswith("_version")]
    assert {"cert_manager_version", "kserve_version", "kube_prometheus_stack_version"} <= set(versions)
    for name in versions + [n for n in variables if n.endswith("namespace")]:
        assert variables[name].get("default"), f"{name} has no default"
        assert variables[name].get("validation"), f"{name} has no validation block"
    # The KServe installed is the one whose CRDs the cluster tests validate against.
    from tests.support.crds import KSERVE_VERSION

    assert variable_default("kserve_version") == KSERVE_VERSION


def test_every_variable_is_used_and_every_reference_is_declared():
    text = "\n".join(p.read_text() for p in MODULE.glob("*.tf"))
    declared = set(blocks(MODULE, "variable"))
    referenced = set(re.findall(r"\bvar\.(\w+)", text))
    assert referenced - declared == set(), "references to undeclared variables"
    assert declared - referenced == set(), "declared but unused variables"


@pytest.mark.parametrize("directory", ROOTS, ids=lambda p: str(p.relative_to(TERRAFORM)))
def test_provider_versions_are_pinned(directory):
    required_version, providers = required_providers(directory)
    assert required_version and required_version.startswith(">=")
    assert set(providers) == {"helm"}
    helm = providers["helm"]
    assert unquote(helm["source"]) == "hashicorp/helm"
    constraint = unquote(helm["version"])
    if directory == MODULE:
        # A reusable module accepts the provider's whole major version; roots pin the exact one.
        assert re.fullmatch(r"~> 3\.\d+", constraint), constraint
    else:
        assert re.fullmatch(r"3\.\d+\.\d+", constraint), constraint


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_call_the_module_with_inputs_it_declares(example):
    modules = blocks(example, "module")
    assert list(modules) == ["shepherd_stack"]
    call = modules["shepherd_stack"]
    assert (example / unquote(call["source"])).resolve() == MODULE
    inputs = {k for k in call if k not in ("source", "version", "providers", "depends_on") and not k.startswith("__")}
    declared = blocks(MODULE, "variable")
    assert inputs <= set(declared), f"undeclared module inputs {sorted(inputs - set(declared))}"
    required = {n for n, body in declared.items() if "default" not in body}
    assert required <= inputs
    text = "\n".join(p.read_text() for p in example.glob("*.tf"))
    for output in re.findall(r"module\.shepherd_stack\.(\w+)", text):
        assert output in blocks(MODULE, "output"), f"{example.name} reads an output the module lacks: {output}"
    assert blocks(example, "provider"), "an example configures the helm provider for its cluster"


# --------------------------------------------------------------------------------------------------
# Values the module sets exist in the charts it installs
# --------------------------------------------------------------------------------------------------
def _has_key(values: dict, dotted: str) -> bool:
    node = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _kserve_chart(name: str) -> Path:
    from tests.support.crds import KSERVE_MODULE, KSERVE_VERSION, module_dir

    return module_dir(KSERVE_MODULE, KSERVE_VERSION) / "charts" / name


def test_kserve_values_exist_and_the_chart_renders_with_them():
    """The chart KServe publishes as oci://ghcr.io/kserve/charts/kserve-resources, from the Go module
    of the same version, rendered by a real helm with exactly what the module sets."""
    release = resources(MODULE, "helm_release")["kserve"]
    assert unquote(release["chart"]) == "kserve-resources"
    assert unquote(release["repository"]) == "oci://ghcr.io/kserve/charts"
    chart = _kserve_chart("kserve-resources")
    assert yaml.safe_load((chart / "Chart.yaml").read_text())["version"] == variable_default("kserve_version")
    values = yaml.safe_load((chart / "values.yaml").read_text())
    settings = {unquote(s["name"]): resolve(s["value"]) for s in release["set"]}
    for key in settings:
        assert _has_key(values, key), f"kserve-resources has no value {key}"
    assert unquote(resources(MODULE, "helm_release")["kserve_crd"]["chart"]) == "kserve-crd"
    assert (_kserve_chart("kserve-crd") / "Chart.yaml").is_file()

    arguments = ["template", "kserve-resources", str(chart), "--namespace", "kserve"]
    for key, value in settings.items():
        arguments += ["--set", f"{key}={value}"]
    result = go_tools.run("helm", *arguments)
    assert result.returncode == 0, result.stderr
    config = next(
        d
        for d in yaml.safe_load_all(result.stdout)
        if d and d["kind"] == "ConfigMap" and d["metadata"]["name"] == "inferenceservice-config"
    )
    assert json.loads(config["data"]["deploy"])["defaultDeploymentMode"] == variable_default("kserve_deployment_mode")


def _wiring_paths(node, prefix=()):
    """Dotted paths of a values object down to its leaves; a label map or a list is one leaf."""
    if isinstance(node, dict) and prefix[-1:] != ("matchLabels",):
        for key, value in node.items():
            if not key.startswith("__"):
                yield from _wiring_paths(value, (*prefix, unquote(key)))
    else:
        yield ".".join(prefix)


def test_shepherd_values_exist_in_the_chart():
    values_file = REPO / "helm" / "shepherd" / "values.yaml"
    assert values_file.is_file(), "the module installs helm/shepherd; its values.yaml is missing"
    values = yaml.safe_load(values_file.read_text())
    local_values = blocks(MODULE, "locals")
    keys = re.findall(r'name = "([^"]+)"', local_values["shepherd_settings"])
    assert {"image.repository", "image.tag", "modelNamespace", "mlflow.enabled", "mlflow.externalUrl"} <= set(keys)
    wiring = list(_wiring_paths(local_values["shepherd_wiring"]))
    assert "controller.prometheusUrl" in wiring and "networkPolicy.mlflowFrom" in wiring
    for key in keys + wiring:
        assert _has_key(values, key), f"helm/shepherd/values.yaml has no value {key}"
    release = resources(MODULE, "helm_release")["shepherd"]
    assert "../../../helm/shepherd" in local_values["shepherd_chart"]
    assert (MODULE / "../../../helm/shepherd/Chart.yaml").resolve().is_file()
    assert release["set"] == "${local.shepherd_settings}"
    # The typed settings win over shepherd_values, which wins over the derived wiring.
    assert release["values"] == ["${yamlencode(local.shepherd_wiring)}", "${yamlencode(var.shepherd_values)}"]


def test_every_release_pins_its_chart_version_except_the_local_chart():
    for name, release in resources(MODULE, "helm_release").items():
        if name == "shepherd":
            assert "version" not in release  # a local path: the chart's own version applies
        else:
            assert re.fullmatch(r"\$\{var\.\w+_version\}", release["version"]), name
            assert release.get("atomic") == "${var.atomic}", name


# --------------------------------------------------------------------------------------------------
# The real tools
# --------------------------------------------------------------------------------------------------
def _tofu(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # An empty CLI configuration: nothing on this machine (or a developer's) changes what tofu reads.
    env = {**os.environ, "TF_CLI_CONFIG_FILE": os.devnull, "TF_IN_AUTOMATION": "1"}
    return subprocess.run(
        [str(infra_tool("tofu")), *args, "-no-color"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )


def test_tofu_fmt_finds_nothing_to_change():
    result = _tofu("fmt", "-check", "-recursive", "-diff", cwd=TERRAFORM)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def terraform_copy(tmp_path_factory) -> Path:
    """terraform/ copied out, so `tofu get` writes its .terraform/ outside the repo."""
    import shutil

    copy = tmp_path_factory.mktemp("tofu") / "terraform"
    shutil.copytree(TERRAFORM, copy, ignore=shutil.ignore_patterns(".terraform*"))
    return copy


@pytest.mark.parametrize("directory", ROOTS, ids=lambda p: str(p.relative_to(TERRAFORM)))
def test_tofu_loads_every_configuration(terraform_copy, directory):
    """`tofu get` installs the (local) module; `tofu providers` then decodes the whole configuration
    (types, validation blocks, module calls and their inputs) without the provider plugins, which
    `tofu validate` would need from the registry."""
    root = terraform_copy / directory.relative_to(TERRAFORM)
    got = _tofu("get", cwd=root)
    assert got.returncode == 0, got.stdout + got.stderr
    result = _tofu("providers", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "provider[registry.opentofu.org/hashicorp/helm]" in result.stdout
    if directory != MODULE:
        assert "module.shepherd_stack" in result.stdout


def test_tofu_rejects_a_broken_configuration(terraform_copy):
    """The check above can fail: the basic example's module with a variable of an unknown type.
    (Inputs a module does not declare, or attributes a provider does not know, are `tofu validate`'s
    job, which needs the providers: terraform/README.md.)"""
    variables = terraform_copy / "modules" / "shepherd-stack" / "variables.tf"
    original = variables.read_text()
    variables.write_text(original.replace("type        = bool", "type        = boolean", 1))
    try:
        results = [_tofu(command, cwd=terraform_copy / "examples" / "basic") for command in ("get", "providers")]
    finally:
        variables.write_text(original)
    assert all(r.returncode != 0 for r in results)
    assert all('"boolean" is not a valid type' in r.stdout + r.stderr for r in results)


def test_checkov_finds_no_failed_check():
    """checkov's Terraform policies, offline (--skip-download: no severities without Prisma Cloud, so
    every failed check counts, not only HIGH ones)."""
    result = go_tools.run(
        "checkov", "-d", str(TERRAFORM), "--framework", "terraform", "--skip-download", "-o", "json", "--quiet",
        timeout=600,
    )  # fmt: skip
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    for entry in reports:
        summary = entry.get("summary", entry)
        assert summary["parsing_errors"] == 0, entry
        assert summary["failed"] == 0, [
            (c["check_id"], c["resource"], c["file_path"]) for c in entry.get("results", {}).get("failed_checks", [])
        ]
    assert result.returncode == 0, result.stderr[-2000:]
