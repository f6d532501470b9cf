"""Fixtures the end-to-end modules share."""

import pytest

from tests.e2e.programs import hub_tiny


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    """A Hub-like folder (model with its tokenizer, data files), built once: for the programs that take names."""
    return hub_tiny.build(str(tmp_path_factory.mktemp("hub")))
