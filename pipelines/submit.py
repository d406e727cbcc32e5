"""Submitting the compiled pipeline to a Kubeflow Pipelines server."""

from __future__ import annotations

import tempfile
from pathlib import Path

from components.errors import PipelineRunError
from components.run_arguments import PipelineArguments
from components.spec import ModelSpec
from pipelines.compile import compile_pipeline


def submit_run(
    host: str,
    spec: ModelSpec,
    tracking_uri: str,
    feature_repo: str,
    experiment: str,
    wait: bool,
    serving_target: str = "kubernetes",
    service_account: str = "shepherd-pipeline-runner",
    drift_url: str = "",
) -> tuple[str, str | None]:
    """Compile, upload and start a run; returns (run id, final state if waited for)."""
    import kfp

    run_arguments = PipelineArguments(
        spec_yaml=spec.to_yaml(),
        tracking_uri=tracking_uri,
        feature_repo=feature_repo,
        serving_target=serving_target,
        drift_url=drift_url,
    )
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(Path(tmp) / "pipeline.yaml")
        arguments = run_arguments.for_package(package)
        try:
            client = kfp.Client(host=host)
            run = client.create_run_from_pipeline_package(
                str(package),
                arguments=arguments,
                run_name=f"{spec.name}-training",
                experiment_name=experiment,
                # The least-privilege runner of manifests/base/pipeline-runner (may deploy InferenceServices).
                service_account=service_account or None,
            )
        except Exception as exc:  # kfp raises urllib3/ApiException/ValueError for an unusable host
            raise PipelineRunError(
                f"could not submit to the KFP server at {host}: {type(exc).__name__}: {exc}".splitlines()[0],
                hint="check --host (the KFP API, e.g. `kubectl port-forward svc/ml-pipeline-ui 8080:80 -n kubeflow`)",
            ) from exc
    state = None
    if wait:
        state = client.wait_for_run_completion(run.run_id, timeout=3600).state
    return run.run_id, state


def schedule_run(
    host: str,
    model: str,
    every_seconds: int,
    tracking_uri: str,
    feature_repo: str,
    experiment: str = "shepherd",
    service_account: str = "shepherd-pipeline-runner",
    drift_url: str = "",
) -> str:
    """A KFP recurring run of the compiled pipeline with MODEL's champion spec, every `every_seconds`
    (at most one run at a time, missed runs not made up); returns its id."""
    import kfp

    from components.spec import load_spec
    from monitoring.webhook import _champion_spec

    with tempfile.TemporaryDirectory() as tmp:
        spec = load_spec(_champion_spec(tracking_uri, model, Path(tmp)))
        run_arguments = PipelineArguments(
            spec_yaml=spec.to_yaml(),
            tracking_uri=tracking_uri,
            feature_repo=feature_repo,
            serving_target="kubernetes",
            drift_url=drift_url,
        )
        package = compile_pipeline(Path(tmp) / "pipeline.yaml")
        try:
            client = kfp.Client(host=host)
            experiment_id = client.create_experiment(name=experiment).experiment_id
            job = client.create_recurring_run(
                experiment_id=experiment_id,
                job_name=f"{model}-retraining",
                description=f"retrain {model} every {every_seconds} s (shepherd schedule)",
                interval_second=every_seconds,
                max_concurrency=1,  # one storm, one run
                no_catchup=True,
                params=run_arguments.for_package(package),
                pipeline_package_path=str(package),
                service_account=service_account or None,
            )
        except Exception as exc:  # kfp raises urllib3/ApiException/ValueError for an unusable host
            raise PipelineRunError(
                f"could not schedule on the KFP server at {host}: {type(exc).__name__}: {exc}".splitlines()[0],
                hint="check --host (the KFP API, e.g. `kubectl port-forward svc/ml-pipeline-ui 8080:80 -n kubeflow`)",
            ) from exc
    return job.recurring_run_id
