"""CRD schemas taken from the Go module cache (the projects' own generated CRDs, not hand-written).

`go mod download` fetches the module once into GOMODCACHE (~/go/pkg/mod); later calls are offline.
Outside CI a missing Go toolchain skips the caller with the way to get it; in CI it fails.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from functools import cache
from pathlib import Path

import yaml

from tests.support.availability import unavailable

KSERVE_MODULE = "github.com/kserve/kserve"
# The newest KServe the Go module proxy serves here with `spec.canary[]` (added in 0.20).
KSERVE_VERSION = "v0.20.0"

# prometheus-operator's CRDs for the chart's monitoring objects (the version the proxy serves here).
PROMETHEUS_OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator"
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"
PROMETHEUS_OPERATOR_CRD_DIR = "example/prometheus-operator-crd"
# The kinds the Helm chart renders: PrometheusRule, ServiceMonitor, PodMonitor, AlertmanagerConfig.
PROMETHEUS_OPERATOR_CRDS = (
    "monitoring.coreos.com_prometheusrules.yaml",
    "monitoring.coreos.com_servicemonitors.yaml",
    "monitoring.coreos.com_podmonitors.yaml",
    "monitoring.coreos.com_alertmanagerconfigs.yaml",
)


def _unavailable(reason: str):
    unavailable(reason, "install Go (https://go.dev/dl) to run this test")


@cache
def module_dir(module: str, version: str) -> Path:
    go = shutil.which("go")
    if go is None:
        _unavailable("the `go` command is needed to fetch CRDs from the Go module proxy")
    result = subprocess.run(
        [go, "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd="/",
        check=False,
    )
    info = json.loads(result.stdout or "{}")
    if "Dir" not in info:
        _unavailable(f"go mod download {module}@{version} failed: {info.get('Error') or result.stderr.strip()}")
    return Path(info["Dir"])


def strict(schema: dict) -> dict:
    """The schema with unknown fields forbidden, as `kubectl --validate=strict` treats them."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node.setdefault("additionalProperties", False)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@cache
def inference_service_schema() -> dict:
    """openAPIV3Schema of serving.kserve.io/v1beta1 InferenceService, strict about unknown fields."""
    path = module_dir(KSERVE_MODULE, KSERVE_VERSION) / "config/crd/full/serving.kserve.io_inferenceservices.yaml"
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    return strict(version["schema"]["openAPIV3Schema"])


@cache
def _inference_service_validator():
    import jsonschema

    # Built once: `jsonschema.validate` would re-check the 2 MB schema itself on every call.
    return jsonschema.Draft7Validator(inference_service_schema())


def validate_inference_service(obj: dict) -> None:
    """Raise jsonschema.ValidationError if `obj` breaks the InferenceService CRD schema."""
    _inference_service_validator().validate(obj)


class _CRDLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """YAML 1.1 reads a bare `=` (an enum value in AlertmanagerConfig's matchers) as the `value` tag."""


_CRDLoader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def prometheus_operator_crds(into: Path) -> list[Path]:
    """The CRDs of the monitoring.coreos.com kinds the Helm chart uses, from the Go module cache,
    written into `into` as JSON (which any YAML loader reads the same way)."""
    root = module_dir(PROMETHEUS_OPERATOR_MODULE, PROMETHEUS_OPERATOR_VERSION) / PROMETHEUS_OPERATOR_CRD_DIR
    paths = []
    for name in PROMETHEUS_OPERATOR_CRDS:
        path = into / name.replace(".yaml", ".json")
        path.write_text(json.dumps(yaml.load((root / name).read_text(), Loader=_CRDLoader)))
        paths.append(path)
    return paths
