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
