import hashlib
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


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """../shared/golden: values computed by openai/guided-diffusion itself (see its README). Missing or changed
    files fail the test: a golden check that silently does not run is no check."""
    path = shared_dir() / "golden"
    if not path.is_dir():
        pytest.fail(f"{path} is missing: the golden values live in ../shared/golden")
    for line in (path / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        name = name.lstrip("*")
        if hashlib.sha256((path / name).read_bytes()).hexdigest() != digest:
            pytest.fail(f"{path / name} does not match SHA256SUMS: the golden values were changed")
    return path
