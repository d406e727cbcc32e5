"""Shared fixtures: the real bundled specs and data."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# The planes the tests start keep their admin tokens here, not in the user's ~/.config/shepherd
# (serving/plane_auth.py); every process the tests start inherits it.
os.environ.setdefault("SHEPHERD_CONFIG_DIR", tempfile.mkdtemp(prefix="shepherd-config-"))


def _undo_feasts_multiprocess_switch() -> None:
    """Importing Feast (feast.metrics) puts PROMETHEUS_MULTIPROC_DIR into this process's environment: every
    plane, predictor and drift service a test starts would inherit it and run prometheus_client in
    multiprocess mode, as no Shepherd process does in production (none imports Feast before it serves
    metrics, and none inherits it). prometheus_client first (this process keeps in-process values), Feast's
    side effect next, then undone."""
    import importlib

    importlib.import_module("prometheus_client")
    importlib.import_module("feast.metrics")

    for name in ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR", "prometheus_multiproc_dir"):
        os.environ.pop(name, None)


_undo_feasts_multiprocess_switch()

REPO = Path(__file__).resolve().parent.parent

# The suite's order: tests that need no built tool first, then those needing the Go- and pip-built linters,
# the image, the bare control plane, and the real node last. On a cold machine `make test` builds the
# tools and the image in the background (scripts/warm-tools.sh, scripts/image.sh) while the first group
# runs; a test reached before its tool is ready waits on the tool's build lock. Within a group pytest's
# order is kept, so module and session fixtures are set up once as before.
_RUN_LATE = (
    ("tests/unit/test_terraform.py", "tests/unit/test_workflows.py", "tests/unit/test_dockerfile.py"),
    ("tests/image/",),
    ("tests/cluster/",),
    (
        "tests/cluster/test_node.py",
        "tests/cluster/test_kserve.py",
        "tests/cluster/test_chart_on_node.py",
        "tests/cluster/test_rollout_on_node.py",
    ),
)


def _run_order(item: pytest.Item) -> int:
    path = Path(str(item.path)).relative_to(REPO).as_posix()
    order = 0
    for rank, prefixes in enumerate(_RUN_LATE, start=1):
        if path.startswith(prefixes):
            order = rank
    return order


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_run_order)  # a stable sort: pytest's order within each group


CHURN_SPEC = REPO / "specs" / "churn.yaml"
CREDIT_SPEC = REPO / "specs" / "credit.yaml"


@pytest.fixture(scope="session")
def churn_spec():
    from components.spec import load_spec

    return load_spec(CHURN_SPEC)


@pytest.fixture(scope="session")
def churn_frame(churn_spec):
    """The real Telco table shaped as the training set the extract step produces (without Feast)."""
    from components import data

    feature_rows, entity_rows = data.split_source(data.load_source(churn_spec), churn_spec)
    return entity_rows.merge(feature_rows, on=[churn_spec.entity.key, "event_timestamp"])


def _forget_mlflow_uris() -> None:
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    if "mlflow" in sys.modules:  # nothing to forget in a process that never imported it
        sys.modules["mlflow"].set_registry_uri("")  # "": the registry follows the tracking URI again


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri():
    """`mlflow.set_tracking_uri` and `set_registry_uri` (components.registry.connect calls both) export
    MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI for subprocesses and keep the registry URI in this process:
    a test must not read another test's registry through them (`models:/` URIs resolve in the registry)."""
    _forget_mlflow_uris()
    yield
    _forget_mlflow_uris()


@pytest.fixture(scope="session")
def registered_churn(tmp_path_factory, churn_spec, churn_frame):
    """A real MLflow store holding churn version 1 (@champion), trained and registered by the same
    functions the pipeline steps call (pipelines.direct, without the KFP runner around them)."""
    from pipelines.direct import train_and_register

    home = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    registered = train_and_register(churn_spec, churn_frame, uri, home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return {"tracking_uri": uri, "version": registered.version, "home": home}


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server (Debian's package) for the session; each user creates its own database."""
    from tests.support import postgres as server

    running = server.start()
    try:
        yield running
    finally:
        server.stop(running)
