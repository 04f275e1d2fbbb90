import os
import sys
from pathlib import Path

# The tests import their media factory as a plain module.
sys.path.insert(0, str(Path(__file__).parent))
# Keep torch from oversubscribing the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")
