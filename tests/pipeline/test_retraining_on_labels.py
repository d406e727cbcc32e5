"""Fresh labels reach training: after labels come back for served predictions, the next run of the same spec
trains (the fingerprint moved with the data) on the source plus the labelled production rows, judged on a
holdout of the most recent rows; a run with no new labels trains nothing and says why."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from components import registry
from components.outcomes import Feedback, OutcomeLedger, Prediction, TargetValues
from components.spec import load_spec
from pipelines.local import run_local
from pipelines.settings import Settings
from serving.traffic import instances
from tests.conftest import CHURN_SPEC

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings.from_env(home=tmp_path_factory.mktemp("retraining-home"))


def _serve_and_label(settings: Settings, spec, frame: pd.DataFrame, prefix: str) -> None:
    """What the plane's drift service and `shepherd feedback` leave in the ledger for `frame`'s rows: each
    predicted (features as the client sent them) and labelled with its real outcome."""
    ledger = OutcomeLedger.at(settings.feature_repo)
    now = time.time()
    rows = instances(spec, frame)
    ledger.record_predictions(
        [
            Prediction(f"{prefix}-{i}", "churn", "1", "champion", now - 60 + i * 0.01, 0.5, row)
            for i, row in enumerate(rows)
        ]
    )
    target = TargetValues("churn", "Yes", "No")
    items = [Feedback(label, id=f"{prefix}-{i}") for i, label in enumerate(frame["churn"])]
    ledger.record_feedback("churn", items, lambda version: target)
    ledger.close()


def _extracted(run) -> dict:
    import json

    metadata = json.loads((run.run_dir / "extract-op" / "executor_output.json").read_text())
    return metadata["artifacts"]["training_set"]["artifacts"][0]["metadata"]


def test_labels_fed_back_make_the_next_run_train_and_none_make_it_say_so(settings, churn_frame):
    spec = load_spec(CHURN_SPEC)
    first = run_local(spec, settings)
    assert first.registered == ("1", "champion")
    assert _extracted(first)["production_rows"] == 0

    segment = churn_frame[(churn_frame["contract"] == "Month-to-month") & (churn_frame["tenure"] < 12)].head(300)
    _serve_and_label(settings, spec, segment, "served")
    second = run_local(spec, settings)
    assert second.unchanged_since is None, "new labelled rows must change the fingerprint"
    assert second.step_outputs("train-op") is not None
    extracted = _extracted(second)
    assert (extracted["source_rows"], extracted["production_rows"]) == (len(churn_frame), 300)
    assert extracted["rows"] == len(churn_frame) + 300
    version = second.registered[0]
    assert version == "2"

    third = run_local(spec, settings)
    assert third.unchanged_since == "2" and third.step_outputs("train-op") is None
    log = third.log_path.read_text()
    assert "no new labelled rows since version 2" in log
    client = registry.connect(settings.tracking_uri)
    assert [str(v.version) for v in client.search_model_versions("name = 'churn'")] == ["2", "1"]
