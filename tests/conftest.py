"""Suite-wide test settings."""
import pytest
import torch


@pytest.fixture(autouse=True, scope='module')
def single_torch_thread():
    """The test machines have 2 shared cores; one intra-op thread avoids oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
