"""The outcome ledger (components/outcomes.py) and live quality (monitoring/quality.py) on real databases:
a SQLite file in a repo directory and PostgreSQL, both as a new process would reopen them."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from components.metrics import expected_calibration_error
from components.outcomes import (
    Feedback,
    FeedbackRejected,
    OutcomeLedger,
    Prediction,
    TargetValues,
    parse_feedback,
)
from monitoring.metrics import QUALITY, QUALITY_LABELLED_ROWS, QUALITY_MINIMUM
from monitoring.quality import QualityMonitor, SpecFacts

TARGET = TargetValues("churn", "Yes", "No")


@pytest.fixture(params=["directory", "postgres"])
def location(request, tmp_path):
    if request.param == "directory":
        return str(tmp_path / "feature_repo")
    return request.getfixturevalue("postgres").create_database(f"ledger_{uuid.uuid4().hex[:12]}")


def _predictions(n: int, *, version="1", role="champion", start=1_000.0, model="churn", prefix="r") -> list[Prediction]:
    rng = np.random.default_rng(7)
    return [
        Prediction(
            id=f"{prefix}{i // 4}-{i % 4}",
            model=model,
            version=version,
            role=role,
            predicted_at=start + i,
            score=float(rng.uniform()),
            features={"tenure": i, "contract": "One year"},
            entity_key=str(100 + i),
        )
        for i in range(n)
    ]


def test_labels_by_id_and_by_entity_survive_a_reopened_ledger(location):
    ledger = OutcomeLedger.at(location)
    ledger.record_predictions(_predictions(8))
    receipt = ledger.record_feedback(
        "churn",
        [Feedback("Yes", id="r0-0"), Feedback(0, id="r0-1"), Feedback("true", entity="105", event_time=1_005.5)],
        lambda version: TARGET,
        now=2_000.0,
    )
    assert (receipt.accepted, receipt.duplicates, receipt.skipped) == (3, 0, [])
    ledger.close()

    reopened = OutcomeLedger.at(location)  # what a restarted service sees
    joined = reopened.labelled("churn")
    assert dict(zip(joined["id"], joined["label"], strict=True)) == {"r0-0": "Yes", "r0-1": "No", "r1-1": "Yes"}
    assert joined.loc[joined["id"] == "r1-1", "features"].iloc[0] == {"tenure": 5, "contract": "One year"}
    assert set(joined["labelled_at"]) == {2_000.0}
    assert reopened.counts("churn") == {"predictions": 8, "labels": 3}
    assert reopened.models() == ["churn"]


def test_what_serves_each_role_is_its_latest_prediction_and_an_older_ledger_gets_the_index(location):
    from sqlalchemy import inspect

    ledger = OutcomeLedger.at(location)
    index = next(i for i in ledger.predictions.indexes if i.name == "ix_shepherd_predictions_role_time")
    index.drop(ledger.engine)  # a ledger written by a release before this index
    ledger.record_predictions(_predictions(6, version="1", start=1_000.0))
    ledger.record_predictions(_predictions(4, version="2", role="canary", start=1_002.0, prefix="c"))
    ledger.record_predictions(_predictions(3, version="2", start=1_010.0, prefix="p"))  # v2 promoted
    ledger.close()

    reopened = OutcomeLedger.at(location)
    names = {i["name"] for i in inspect(reopened.engine).get_indexes("shepherd_predictions")}
    assert "ix_shepherd_predictions_role_time" in names
    assert reopened.serving_versions("churn", ("champion", "canary")) == {"champion": "2", "canary": "2"}
    assert reopened.serving_versions("churn", ("champion",)) == {"champion": "2"}
    assert reopened.serving_versions("other", ("champion", "canary")) == {}


def test_an_entity_label_goes_to_the_latest_prediction_at_or_before_its_time(location):
    ledger = OutcomeLedger.at(location)
    early, late = _predictions(1, start=1_000.0, prefix="a")[0], _predictions(1, start=1_050.0, prefix="b")[0]
    ledger.record_predictions([early, late])  # the same entity (key "100") predicted twice
    ledger.record_feedback("churn", [Feedback("No", entity="100", event_time=1_049.0)], lambda v: TARGET)
    assert list(ledger.labelled("churn")["id"]) == ["a0-0"]
    with pytest.raises(FeedbackRejected, match=r"labels\[0\]\.entity: no prediction of 'churn' for entity '100'"):
        ledger.record_feedback("churn", [Feedback("No", entity="100", event_time=999.0)], lambda v: TARGET)


def test_many_entity_labels_in_one_call_each_find_their_own_prediction(location):
    """1,200 entities (more than one lookup chunk), each predicted at random times; labels at random event
    times go to the newest prediction of their entity at or before that time, as a direct search says."""
    rng = np.random.default_rng(11)
    predictions = [
        Prediction(f"e{e}-{k}", "churn", "1", "champion", float(at), 0.5, {}, entity_key=f"cust-{e}")
        for e in range(1_200)
        for k, at in enumerate(rng.choice(np.arange(1_000, 2_000), size=int(rng.integers(1, 5)), replace=False))
    ]
    ledger = OutcomeLedger.at(location)
    ledger.record_predictions(predictions)
    asked = [(f"cust-{e}", float(rng.integers(1_000, 2_100))) for e in range(0, 1_200, 2)]

    def expected(entity: str, at: float) -> str | None:
        mine = [p for p in predictions if p.entity_key == entity and p.predicted_at <= at]
        return max(mine, key=lambda p: p.predicted_at).id if mine else None

    wanted = {entity: expected(entity, at) for entity, at in asked}
    labels = [Feedback("Yes", entity=entity, event_time=at) for entity, at in asked if wanted[entity]]
    receipt = ledger.record_feedback("churn", labels, lambda v: TARGET)
    assert receipt.accepted == len(labels) > 300
    joined = ledger.labelled("churn")
    assert sorted(joined["id"]) == sorted(i for i in wanted.values() if i)


def test_retention_deletes_old_unlabelled_predictions_and_keeps_every_labelled_one(location):
    ledger = OutcomeLedger.at(location)
    ledger.record_predictions(_predictions(12, start=1_000.0, prefix="old"))  # 1,000 .. 1,011
    ledger.record_predictions(_predictions(4, start=5_000.0, prefix="new"))
    ledger.record_predictions(_predictions(4, start=1_000.0, model="credit", prefix="old"))
    ledger.record_feedback("churn", [Feedback("Yes", id="old0-1"), Feedback("No", id="old2-3")], lambda v: TARGET)
    before = ledger.labelled("churn")

    # churn: the 8 made before 1,008 (old0-0 .. old1-3) but the labelled old0-1; credit: all 4.
    assert ledger.prune_unlabelled(older_than=1_008.0, chunk=3) == 7 + 4
    assert ledger.counts("churn") == {"predictions": 16 - 7, "labels": 2}
    assert ledger.counts("credit") == {"predictions": 0, "labels": 0}
    assert ledger.labelled("churn").equals(before)  # live quality and training rows untouched
    assert ledger.prune_unlabelled(older_than=1_008.0) == 0
    # A label arriving late for a pruned prediction is an unknown id, named as such.
    with pytest.raises(FeedbackRejected, match=r"labels\[0\]\.id: no prediction of 'churn' for id 'old0-0'"):
        ledger.record_feedback("churn", [Feedback("Yes", id="old0-0")], lambda v: TARGET)


def test_bad_feedback_is_refused_item_by_item_and_nothing_is_recorded(location):
    ledger = OutcomeLedger.at(location)
    ledger.record_predictions(_predictions(4))
    ledger.record_feedback("churn", [Feedback("Yes", id="r0-3")], lambda v: TARGET)
    batch = [
        Feedback("Yes", id="r0-0"),  # fine on its own
        Feedback("Maybe", id="r0-1"),  # not a target value
        Feedback("Yes", id="nope-0"),  # unknown
        Feedback("No", id="r0-3"),  # already labelled Yes
        Feedback("Yes", id="r0-2"),
        Feedback("No", id="r0-2"),  # contradicts the item before
        Feedback("Yes", id="r0-0", entity=None),
    ]
    with pytest.raises(FeedbackRejected) as caught:
        ledger.record_feedback("churn", batch, lambda v: TARGET)
    errors = caught.value.errors
    assert any(e.startswith("labels[1].label: 'Maybe' is not a value of the target 'churn'") for e in errors)
    assert any(e.startswith("labels[2].id: no prediction of 'churn' for id 'nope-0'") for e in errors)
    assert any(e.startswith("labels[3].label: prediction 'r0-3' is already labelled 'Yes'") for e in errors)
    assert any(
        e.startswith("labels[5].label: 'No' for prediction 'r0-2', which labels[4] labels 'Yes'") for e in errors
    )
    assert len(errors) == 4
    assert list(ledger.labelled("churn")["id"]) == ["r0-3"]  # all or nothing
    assert caught.value.http_status == 422


def test_the_same_label_again_is_a_duplicate_and_unknown_ids_may_be_skipped(location):
    ledger = OutcomeLedger.at(location)
    ledger.record_predictions(_predictions(4))
    first = ledger.record_feedback("churn", [Feedback("Yes", id="r0-0")], lambda v: TARGET)
    again = ledger.record_feedback(
        "churn", [Feedback(1, id="r0-0"), Feedback("No", id="gone-0")], lambda v: TARGET, skip_unknown=True
    )
    assert (first.accepted, again.accepted, again.duplicates, again.skipped) == (1, 0, 1, ["gone-0"])
    other_model = ledger.record_feedback("other", [Feedback("Yes", id="r0-0")], lambda v: TARGET, skip_unknown=True)
    assert other_model.skipped == ["r0-0"]  # ids are per model


def test_a_prediction_recorded_twice_keeps_its_first_record(location):
    ledger = OutcomeLedger.at(location)
    first = _predictions(1)[0]
    ledger.record_predictions([first])
    ledger.record_predictions([Prediction(**{**first.__dict__, "score": 0.99, "version": "9"})])
    ledger.record_feedback("churn", [Feedback("Yes", id=first.id)], lambda v: TARGET)
    row = ledger.labelled("churn").iloc[0]
    assert (row["score"], row["version"]) == (first.score, "1")


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({}, "labels: required"),
        ({"labels": []}, "labels: empty"),
        ({"labels": [{"id": "a-0"}]}, r"labels\[0\]\.label: required"),
        ({"labels": [{"label": "Yes"}]}, r"labels\[0\]\.id: required \(or entity and event_time\)"),
        ({"labels": [{"id": 5, "label": "Yes"}]}, r"labels\[0\]\.id: expected a prediction id"),
        ({"labels": [{"entity": 5, "label": "Yes"}]}, r"labels\[0\]\.event_time: required with entity"),
        ({"labels": [{"entity": 5, "event_time": "2026-01-01T00:00:00", "label": 1}]}, r"labels\[0\]\.event_time"),
        ({"labels": [{"id": "a-0", "entity": 5, "label": 1}]}, r"labels\[0\]: give id, or entity and event_time"),
        ({"labels": [{"id": "a-0", "label": [1]}]}, r"labels\[0\]\.label: expected a string"),
        ({"labels": [{"id": "a-0", "label": 1, "colour": "red"}]}, r"labels\[0\]\.colour: not a field"),
        ({"labels": [{"id": "a-0", "label": 1}], "extra": 1}, "extra: not a field of a feedback body"),
        ({"labels": ["a-0"]}, r"labels\[0\]: expected an object"),
    ],
)
def test_a_malformed_feedback_body_names_the_field(body, named):
    with pytest.raises(FeedbackRejected, match=named):
        parse_feedback(body)


def test_feedback_times_take_iso_8601_with_a_zone_or_unix_seconds():
    items = parse_feedback(
        {
            "labels": [
                {"entity": 7, "event_time": "2026-12-03T10:00:00Z", "label": "Yes"},
                {"entity": "7", "event_time": 1_796_292_000, "label": "No"},
            ]
        }
    )
    assert [i.event_time for i in items] == [1_796_292_000.0, 1_796_292_000.0]
    assert {i.entity for i in items} == {"7"}


def _sample(registry, name, **labels):
    return registry.get_sample_value(name, labels)


def test_quality_gauges_equal_scikit_learn_on_the_same_joined_rows(location):
    """Champion (v1) and canary (v2) windows scored apart; every gauge equals a direct computation."""
    ledger = OutcomeLedger.at(location)
    rng = np.random.default_rng(3)
    champion, canary = _predictions(300, prefix="c"), _predictions(120, version="2", role="canary", prefix="k")
    ledger.record_predictions(champion + canary)
    truth = {p.id: ("Yes" if rng.uniform() < p.score else "No") for p in champion + canary}
    feedback = [Feedback(label, id=pid) for pid, label in truth.items()]
    ledger.record_feedback("churn", feedback, lambda v: TARGET, now=5_000.0)
    facts = SpecFacts(TARGET, 0.5, {"roc_auc": 0.8}, {"log_loss": 0.5})
    registry = CollectorRegistry()
    monitor = QualityMonitor(ledger, lambda model, version: facts, registry, window=250, max_age_seconds=1e12)
    results = {r.role: r for r in monitor.compute()}
    assert results["champion"].labelled_rows == 250 and results["canary"].labelled_rows == 120

    for role, predictions, version in (("champion", champion[-250:], "1"), ("canary", canary, "2")):
        y = np.array([1 if truth[p.id] == "Yes" else 0 for p in predictions])
        proba = np.array([p.score for p in predictions])
        expected = {
            "roc_auc": roc_auc_score(y, proba),
            "log_loss": log_loss(y, proba),
            "brier": brier_score_loss(y, proba),
            "ece": expected_calibration_error(y, proba),
            "positive_rate": y.mean(),
            "predicted_positive_rate": (proba >= 0.5).mean(),
        }
        for metric, value in expected.items():
            got = _sample(registry, QUALITY, model="churn", version=version, role=role, metric=metric)
            assert got == pytest.approx(value, rel=1e-9), (role, metric)
        assert _sample(registry, QUALITY_LABELLED_ROWS, model="churn", version=version, role=role) == len(predictions)
    assert _sample(registry, QUALITY_MINIMUM, model="churn", metric="roc_auc") == 0.8


def test_a_window_of_one_class_has_no_roc_auc_and_a_new_version_replaces_the_old_series(location):
    ledger = OutcomeLedger.at(location)
    ledger.record_predictions(_predictions(10, prefix="a"))
    ledger.record_feedback("churn", [Feedback("No", id=f"a{i // 4}-{i % 4}") for i in range(10)], lambda v: TARGET)
    registry = CollectorRegistry()
    facts = SpecFacts(TARGET, 0.5, {}, {})
    monitor = QualityMonitor(ledger, lambda m, v: facts, registry, max_age_seconds=1e12)
    monitor.compute()
    labels = {"model": "churn", "version": "1", "role": "champion"}
    assert _sample(registry, QUALITY, **labels, metric="roc_auc") is None
    assert _sample(registry, QUALITY, **labels, metric="positive_rate") == 0.0

    ledger.record_predictions(_predictions(10, version="2", start=5_000.0, prefix="b"))
    ledger.record_feedback("churn", [Feedback("Yes", id=f"b{i // 4}-{i % 4}") for i in range(10)], lambda v: TARGET)
    monitor.compute()
    assert _sample(registry, QUALITY, **labels, metric="positive_rate") is None  # v1 no longer serves
    assert _sample(registry, QUALITY, **{**labels, "version": "2"}, metric="positive_rate") == 1.0


def test_a_promotion_moves_the_champion_series_before_the_new_versions_labels_come(location):
    """After v2 is promoted, v1's old (labelled) scores must not stand for the champion: an alert on them
    would retrain a model that no longer serves. A bound the new champion's spec drops is dropped too."""
    ledger = OutcomeLedger.at(location)
    ledger.record_predictions(_predictions(12, prefix="a"))
    ledger.record_feedback("churn", [Feedback("No", id=f"a{i // 4}-{i % 4}") for i in range(12)], lambda v: TARGET)
    registry = CollectorRegistry()
    specs = {"1": SpecFacts(TARGET, 0.5, {"f1": 0.5, "roc_auc": 0.8}, {}), "2": SpecFacts(TARGET, 0.5, {"f1": 0.5}, {})}
    monitor = QualityMonitor(ledger, lambda m, v: specs[v], registry, max_age_seconds=1e12)
    monitor.compute()
    old = {"model": "churn", "version": "1", "role": "champion"}
    assert _sample(registry, QUALITY_LABELLED_ROWS, **old) == 12

    ledger.record_predictions(_predictions(3, version="2", start=9_000.0, prefix="b"))  # v2 serves, unlabelled
    monitor.compute()
    assert _sample(registry, QUALITY_LABELLED_ROWS, **old) is None
    assert _sample(registry, QUALITY, **old, metric="positive_rate") is None
    assert monitor.latest("churn") == []

    ledger.record_feedback("churn", [Feedback("Yes", id="b0-0")], lambda v: TARGET)
    monitor.compute()
    assert _sample(registry, QUALITY_LABELLED_ROWS, model="churn", version="2", role="champion") == 1
    assert _sample(registry, QUALITY_MINIMUM, model="churn", metric="f1") == 0.5
    assert _sample(registry, QUALITY_MINIMUM, model="churn", metric="roc_auc") is None
