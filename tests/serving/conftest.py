"""Fixtures shared by the serving tests."""

from __future__ import annotations

import pytest
import yaml

from components.spec import parse_spec
from pipelines.direct import train_and_register


@pytest.fixture(scope="session")
def two_versions(registered_churn, churn_spec, churn_frame):
    """Version 1 (@champion, from the session registry) and a challenger version 2: the tracking URI."""
    uri, home = registered_churn["tracking_uri"], registered_churn["home"]
    data = yaml.safe_load(churn_spec.to_yaml())
    data["training"]["params"]["C"] = 0.5
    registered = train_and_register(parse_spec(yaml.safe_dump(data)), churn_frame, uri, home, "challenger")
    assert (registered.version, registered.alias) == ("2", "challenger")
    return uri
