"""test_pyroscope_e2e_faults.py against the legacy endpoint (api = ingest)."""
import os
import sys

os.environ["HOLMES_TEST_PYRO_API"] = "ingest"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_pyroscope_e2e import run_tests  # noqa: E402

if __name__ == "__main__":
    run_tests("test_pyroscope_e2e_faults")
