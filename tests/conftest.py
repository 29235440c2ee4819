"""Suite-wide test settings."""
import os
import tempfile

import pytest
import torch

# Converted fp16 graphs of the shipped model go to a per-run folder, not ~/.cache (mpnet_model/infer/precision.py).
os.environ.setdefault('MPNET_CACHE_DIR', tempfile.mkdtemp(prefix='mpnet-test-cache-'))


@pytest.fixture(autouse=True, scope='module')
def single_torch_thread():
    """The test machines have 2 shared cores; one intra-op thread avoids oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
