"""What the fault tests share: a rollout spec in one-second steps and a registry with v1 @champion and
v2 @challenger. The tests here roll v2 back, never promote it, so @champion stays v1 for each of them."""

from __future__ import annotations

import pytest

from tests.support.rollouts import champion_and_challenger, fast_rollout_spec


@pytest.fixture(scope="package")
def fast_spec(churn_spec):
    return fast_rollout_spec(churn_spec, min_requests=10)


@pytest.fixture(scope="package")
def registry_with_challenger(tmp_path_factory, fast_spec, churn_frame):
    home = tmp_path_factory.mktemp("faults")
    return home, champion_and_challenger(fast_spec, churn_frame, home)
