import os
import sys
from pathlib import Path

import pytest

# The tests import their media factory as a plain module.
sys.path.insert(0, str(Path(__file__).parent))
# Keep torch from oversubscribing the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests with one torch thread: other processes share the 2 cores and
    oversubscription stalls small models."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def ctrl_c_reaches_python():
    """Ctrl-C as in a terminal: a shell starts background jobs with SIGINT ignored, and the
    tests that press Ctrl-C (a real SIGINT) would then see nothing happen."""
    import signal

    before = signal.getsignal(signal.SIGINT)
    if before is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if before is signal.SIG_IGN:
        signal.signal(signal.SIGINT, before)
