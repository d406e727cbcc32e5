"""Extract: stage the source's feature rows in a Feast repo of its own, read back a point-in-time
correct training set, and decide whether anything needs training at all (fingerprint of data + spec
+ code).

Write-audit-publish: rows reach the shared feature repo (and the online store) only in the
materialize step, after validation passed, so a bad source never changes what serving reads.
"""

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from kfp import dsl

from components import data, features
from components.adapter import step
from components.spec import ModelSpec


@dataclass
class Extracted:
    training_set: pd.DataFrame
    feature_rows: pd.DataFrame
    data_fingerprint: str
    fingerprint: str


def combined_fingerprint(data_fingerprint: str, spec: ModelSpec, code_version: str) -> str:
    """What a version was trained from; equal fingerprints mean retraining would change nothing."""
    parts = f"data={data_fingerprint};spec={spec.fingerprint()};code={code_version}"
    return hashlib.sha256(parts.encode()).hexdigest()


def extract(spec: ModelSpec, code_version: str) -> Extracted:
    """Source -> a staging Feast repo -> point-in-time training set, with its fingerprints."""
    raw = data.load_source(spec)
    feature_rows, entity_rows = data.split_source(raw, spec)
    with tempfile.TemporaryDirectory(prefix="shepherd-staging-") as staging:
        store = features.open_store(Path(staging))
        features.publish_features(store, spec, feature_rows)
        training_set = features.training_frame(store, spec, entity_rows)
    data_fp = data.fingerprint_frame(training_set)
    return Extracted(training_set, feature_rows, data_fp, combined_fingerprint(data_fp, spec, code_version))


@step
def extract_op(
    spec_yaml: str,
    tracking_uri: str,
    training_set: dsl.Output[dsl.Dataset],
    feature_rows: dsl.Output[dsl.Dataset],
) -> str:
    """Stage features in Feast and build the training set. Returns the registered version already
    trained from the same fingerprint, or "" when there is something new to train.

    (One output only: KFP's local runner cannot resolve conditions on named outputs of a
    multi-output task; the fingerprints travel in the dataset's metadata.)
    """
    from components import registry
    from components.extract import extract
    from components.platform import code_version
    from components.progress import say
    from components.spec import parse_spec

    spec = parse_spec(spec_yaml)
    code = code_version()
    result = extract(spec, code)
    result.training_set.to_parquet(training_set.path, index=False)
    result.feature_rows.to_parquet(feature_rows.path, index=False)
    training_set.metadata.update(
        {
            "rows": len(result.training_set),
            "fingerprint": result.fingerprint,
            "data_fingerprint": result.data_fingerprint,
            "code_version": code,
        }
    )
    client = registry.connect(tracking_uri)
    existing = registry.version_with_fingerprint(client, spec.name, result.fingerprint)
    trained = str(existing.version) if existing is not None else ""
    say(
        f"extract: {len(result.training_set)} rows via Feast, fingerprint {result.fingerprint[:12]}"
        + (f" = version {trained}: nothing to train" if trained else " (new)")
    )
    return trained
