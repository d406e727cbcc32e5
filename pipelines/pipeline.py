"""The training DAG: extract (Feast) -> validate (GE) -> train -> evaluate (vs @champion) -> register
(MLflow), with the deploy step under `dsl.If(promote)` and materialize (Feast online store) after train.

Everything the run needs travels as parameters (the spec's YAML text, the tracking URI, the feature
repo, where to deploy), so the same compiled YAML runs locally under `kfp.local` and on a KFP server.
`serving_target`: "" renders the InferenceService only, "kubernetes" applies it to the cluster the
step runs in, a URL applies it to a local serving plane. `drift_url`: where the predictors' payload
logger posts on a cluster (the chart's drift service); a local plane has its own.
"""

from kfp import dsl

from components.deploy import deploy_op
from components.evaluate import evaluate_op
from components.extract import extract_op
from components.materialize import materialize_op
from components.register import register_op
from components.train import train_op
from components.validate import validate_op

PIPELINE_NAME = "shepherd-training"


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Validate, train, evaluate against @champion, register, and deploy a canary if promoted.",
)
def training_pipeline(
    spec_yaml: str, tracking_uri: str, feature_repo: str, serving_target: str = "", drift_url: str = ""
):
    # Caching on a KFP server: a step may be served from cache only if it is a pure function of its
    # inputs. Extract reads the source and the registry, evaluate reads @champion, and train,
    # register, materialize and deploy write to MLflow, Feast or the cluster: all run every time.
    # Only validate (the training set and the spec in, a report out) keeps its cache.
    extract = extract_op(spec_yaml=spec_yaml, tracking_uri=tracking_uri, feature_repo=feature_repo)
    extract.set_display_name("extract features (Feast, staged)")
    extract.set_caching_options(False)
    training_set = extract.outputs["training_set"]

    # Unchanged data, spec and code: the fingerprint names a version that exists; train nothing.
    with dsl.If(extract.outputs["Output"] == "", name="new-fingerprint"):
        validate = validate_op(spec_yaml=spec_yaml, training_set=training_set)
        validate.set_display_name("validate (Great Expectations)")

        train = train_op(
            spec_yaml=spec_yaml,
            tracking_uri=tracking_uri,
            training_set=training_set,
            pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        ).after(validate)
        train.set_display_name("train")
        train.set_caching_options(False)

        # After train, not beside it: a run whose training fails leaves the shared feature repo and
        # the online store as they were.
        materialize = materialize_op(
            spec_yaml=spec_yaml, feature_repo=feature_repo, feature_rows=extract.outputs["feature_rows"]
        ).after(train)
        materialize.set_display_name("publish features + materialize online store")
        materialize.set_caching_options(False)

        evaluate = evaluate_op(
            spec_yaml=spec_yaml,
            tracking_uri=tracking_uri,
            training_set=training_set,
            model_uri=train.outputs["model_uri"],
        )
        evaluate.set_display_name("evaluate vs @champion")
        evaluate.set_caching_options(False)

        register = register_op(
            spec_yaml=spec_yaml,
            tracking_uri=tracking_uri,
            run_id=train.outputs["run_id"],
            model_uri=train.outputs["model_uri"],
            verdict=evaluate.outputs["verdict"],
        )
        register.set_display_name("register (MLflow)")
        register.set_caching_options(False)

        with dsl.If(evaluate.outputs["Output"] == True, name="promote"):  # noqa: E712 (a KFP condition)
            deploy = deploy_op(
                spec_yaml=spec_yaml,
                tracking_uri=tracking_uri,
                version=register.outputs["version"],
                alias=register.outputs["alias"],
                serving_target=serving_target,
                drift_url=drift_url,
            )
            deploy.set_display_name("deploy (KServe InferenceService)")
            deploy.set_caching_options(False)
