import pytest
import torch
from golden import Golden


@pytest.fixture(scope="session")
def golden_data(golden_dir) -> Golden:
    return Golden(golden_dir)


@pytest.fixture
def one_thread():
    """torch on one thread for the test: the tiny networks of the fast tier run faster on one thread than on two, and
    far faster when other processes share the two cores (a 10-step DDIM test: 39 s on two threads, under 1 s on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def golden(golden_data, one_thread):
    """The golden values, with torch on one thread as when they were computed (the closest match)."""
    return golden_data
