"""The embedded SmolLM2-135M, loaded once per test session."""

from __future__ import annotations

import pytest

from interpkit.models import Model, load_model


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def smollm2() -> Model:
    return load_model("smollm2-135m")
