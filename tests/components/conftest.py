import pytest
import torch
from golden import Golden


@pytest.fixture(scope="session")
def golden_data(golden_dir) -> Golden:
    return Golden(golden_dir)


@pytest.fixture
def golden(golden_data):
    """The golden values, with torch on one thread as when they were computed: the closest match, and these tiny
    networks run faster on one thread than on two (much faster when other processes share the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield golden_data
    torch.set_num_threads(threads)
