"""One model-input contract (components/model_input.py): a table fed to the ONNX graph by the parity
check and the same rows sent as a request are the same feeds; the predictor starts without the
training stack; no first-party module imports itself round a cycle."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from components.model_input import MISSING_CATEGORY, columns_of, feature_frame, onnx_feeds
from serving.payload import PayloadParser

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("components", "serving", "monitoring", "pipelines")


def _with_missing(frame: pd.DataFrame) -> pd.DataFrame:
    """Real rows with a missing category and a missing number (both features allow nulls in no spec:
    the contract must still encode them the one way the pipeline was trained to read)."""
    rows = frame.head(40).copy()
    rows["contract"] = rows["contract"].astype(object)
    rows.loc[rows.index[3], "contract"] = None
    rows.loc[rows.index[5], "total_charges"] = np.nan
    return rows


def test_a_table_and_the_same_rows_as_a_request_are_the_same_feeds(churn_spec, churn_frame):
    rows = _with_missing(churn_frame)
    from_table = onnx_feeds(churn_spec, columns_of(rows, churn_spec))
    # The request a client sends for these rows: JSON of the model's input columns (missing -> null).
    instances = json.loads(feature_frame(rows, churn_spec).replace({MISSING_CATEGORY: None}).to_json(orient="records"))
    parser = PayloadParser(churn_spec)
    parser.rules = [r.__class__(r.name, r.numeric, True, r.categories) for r in parser.rules]  # accept the nulls
    from_request = onnx_feeds(churn_spec, parser.from_v1({"instances": instances}))
    assert list(from_table) == list(from_request) == churn_spec.feature_names
    for name in churn_spec.feature_names:
        assert from_table[name].shape == from_request[name].shape == (len(rows), 1)
        assert from_table[name].dtype == from_request[name].dtype
        np.testing.assert_array_equal(from_table[name], from_request[name])
    assert from_table["contract"][3, 0] == MISSING_CATEGORY
    assert np.isnan(from_table["total_charges"][5, 0])


def test_the_scikit_learn_frame_encodes_missing_values_as_the_graph_does(churn_spec, churn_frame):
    rows = _with_missing(churn_frame)
    frame = feature_frame(rows, churn_spec)
    feeds = onnx_feeds(churn_spec, columns_of(rows, churn_spec))
    assert frame["contract"].iloc[3] == feeds["contract"][3, 0] == MISSING_CATEGORY
    assert np.isnan(frame["total_charges"].iloc[5])
    np.testing.assert_allclose(
        frame["monthly_charges"].to_numpy(dtype=np.float32), feeds["monthly_charges"][:, 0], rtol=0
    )


def test_the_predictor_starts_without_the_training_stack():
    heavy = ("kfp", "sklearn", "skl2onnx", "mlflow", "great_expectations", "feast", "evidently")
    probe = f"import sys, serving.predictor; print([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"serving.predictor imports {done.stdout.strip()} at start"


def _module_imports(path: Path, module: str) -> set[str]:
    """First-party modules `module` imports, at module level or inside its functions (a lazy import is
    still a dependency), but not under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for child in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in PACKAGES and name != module}


def test_no_first_party_import_cycle():
    modules = {
        ".".join(path.relative_to(REPO).with_suffix("").parts): path
        for package in PACKAGES
        for path in (REPO / package).rglob("*.py")
    }
    graph = {name: {m for m in _module_imports(path, name) if m in modules} for name, path in modules.items()}
    visiting, done = [], set()

    def visit(name: str) -> None:
        if name in done:
            return
        assert name not in visiting, "import cycle: " + " -> ".join([*visiting[visiting.index(name) :], name])
        visiting.append(name)
        for imported in sorted(graph[name]):
            visit(imported)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
    assert graph["components.onnx_export"] >= {"components.model_input"}
    assert "components.train" not in graph["components.onnx_export"]
