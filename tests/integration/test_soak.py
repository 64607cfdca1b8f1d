"""The soak (tests/soak/soak.py, `make soak` runs it for 30 minutes per
backend), for half a minute per backend: ab and wrk with and without
keep-alive, redis-benchmark -k 0, dnsperf and hashed curl downloads through
two proxies, a proxy restarted half-way (preload); no failed request, no
lost byte, and memory and descriptors that end where they started."""
import os
import subprocess
import sys

import pytest

from itsupport import ROOT, WFPR

SOAK = os.path.join(ROOT, "tests", "soak", "soak.py")


@pytest.mark.parametrize("backend", ["preload", "ebpf"])
def test_short_soak(backend, tmp_path):
    report = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, SOAK, "--minutes", "0.5", "--sample", "5", "--backend", backend,
                          "--report", str(report)], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, WFPR_BIN=WFPR))
    if run.returncode == 77:
        pytest.skip(run.stdout.strip())
    assert run.returncode == 0, run.stdout + run.stderr[-5000:]
    print(run.stdout)
