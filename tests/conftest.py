import os
import tempfile

import pytest
import torch

# Each xdist worker gets one thread: two workers on a 2-core machine, no oversubscription.
torch.set_num_threads(int(os.environ.get("DIFFPRUNE_TEST_THREADS", "1")))
os.environ.setdefault("DIFFPRUNE_BENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
# Each xdist worker registers its cell workers for quiet timing in its own folder: tests never pause each other.
os.environ["DIFFPRUNE_BENCH_QUIET_DIR"] = tempfile.mkdtemp(prefix="diffprune-quiet-")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
