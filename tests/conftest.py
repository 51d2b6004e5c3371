import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_dir() -> Path:
    """../shared beside the checkout (the project's read-only shared folder); ADM_SHARED overrides."""
    return Path(os.environ.get("ADM_SHARED", SHARED))


@pytest.fixture(scope="session")
def checkpoint_formats() -> Path:
    path = shared_dir() / "checkpoint_formats"
    if not path.is_dir():
        pytest.fail(f"{path} is missing: the checkpoint manifests live in ../shared/checkpoint_formats")
    return path
