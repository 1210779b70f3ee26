from __future__ import annotations

from pathlib import Path

import pytest

from tests.state.backends import BACKENDS, Backend


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each conformance test runs once per backend, on storage of its own."""
    return BACKENDS[request.param](request, tmp_path)
