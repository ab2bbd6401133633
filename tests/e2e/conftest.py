"""Fixtures every e2e module may use."""

from __future__ import annotations

import pytest

from tests.e2e.helpers import core_images


@pytest.fixture(scope="module", params=core_images())
def image(request: pytest.FixtureRequest) -> str:
    """The release of a core module's box (mail, DNS, engine): the module runs once per release, a box
    each, one after the other (pytest orders its tests by this parameter)."""
    return str(request.param)
