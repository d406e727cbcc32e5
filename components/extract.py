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
from components.spec import EVENT_TIMESTAMP, ModelSpec


@dataclass
class Extracted:
    training_set: pd.DataFrame
    feature_rows: pd.DataFrame
    data_fingerprint: str
    fingerprint: str
    source_rows: int = 0  # labelled rows from the spec's source (within the window)
    production_rows: int = 0  # labelled production predictions (within the window)


def combined_fingerprint(data_fingerprint: str, spec: ModelSpec, code_version: str) -> str:
    """What a version was trained from; equal fingerprints mean retraining would change nothing."""
    parts = f"data={data_fingerprint};spec={spec.fingerprint()};code={code_version}"
    return hashlib.sha256(parts.encode()).hexdigest()


def extract(spec: ModelSpec, code_version: str, labelled: pd.DataFrame | None = None) -> Extracted:
    """Source (+ the `labelled` production predictions, `OutcomeLedger.labelled`) -> a staging Feast repo ->
    point-in-time training set within the spec's window, with its fingerprints."""
    raw = data.load_source(spec)
    feature_rows, entity_rows = data.split_source(raw, spec)
    from_source = len(entity_rows)
    if labelled is not None and not labelled.empty:
        more_features, more_entities = data.production_rows(labelled, spec)
        feature_rows = pd.concat([feature_rows, more_features], ignore_index=True)
        entity_rows = pd.concat([entity_rows, more_entities], ignore_index=True)
    if spec.source.window_days is not None and not entity_rows.empty:
        newest = entity_rows[EVENT_TIMESTAMP].max()
        feature_rows = data.within_window(feature_rows, newest, spec.source.window_days)
        entity_rows = data.within_window(entity_rows, newest, spec.source.window_days)
    produced = int((entity_rows.index >= from_source).sum())  # concat kept the source's rows first
    with tempfile.TemporaryDirectory(prefix="shepherd-staging-") as staging:
        store = features.open_store(Path(staging))
        features.publish_features(store, spec, feature_rows)
        training_set = features.training_frame(store, spec, entity_rows)
    data_fp = data.fingerprint_frame(training_set)
    fingerprint = combined_fingerprint(data_fp, spec, code_version)
    return Extracted(training_set, feature_rows, data_fp, fingerprint, len(entity_rows) - produced, produced)


@step
def extract_op(
    spec_yaml: str,
    tracking_uri: str,
    feature_repo: str,
    training_set: dsl.Output[dsl.Dataset],
    feature_rows: dsl.Output[dsl.Dataset],
) -> str:
    """Stage features in Feast and build the training set from the source and the labelled production
    predictions in the outcome ledger beside `feature_repo`. Returns the registered version already
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
    labelled = None
    if spec.source.production_labels:
        from components.outcomes import OutcomeLedger

        ledger = OutcomeLedger.at(feature_repo)
        try:
            labelled = ledger.labelled(spec.name)
        finally:
            ledger.close()
    result = extract(spec, code, labelled)
    result.training_set.to_parquet(training_set.path, index=False)
    result.feature_rows.to_parquet(feature_rows.path, index=False)
    training_set.metadata.update(
        {
            "rows": len(result.training_set),
            "fingerprint": result.fingerprint,
            "data_fingerprint": result.data_fingerprint,
            "code_version": code,
            "source_rows": result.source_rows,
            "production_rows": result.production_rows,
        }
    )
    client = registry.connect(tracking_uri)
    existing = registry.version_with_fingerprint(client, spec.name, result.fingerprint)
    trained = str(existing.version) if existing is not None else ""
    rows = f"{result.source_rows} source rows + {result.production_rows} labelled production rows"
    if not spec.source.production_labels:
        rows = f"{result.source_rows} source rows (production labels off)"
    say(f"extract: {rows} via Feast, fingerprint {result.fingerprint[:12]}" + (" (new)" if not trained else ""))
    if trained:
        say(
            f"extract: = version {trained}: nothing to train (no new labelled rows since version {trained}; "
            "labels come back with `shepherd feedback`)"
        )
    return trained
