"""Memory over many epochs (benchmarks/soak.py, shortened): a Pipeline iterated for 40 epochs in a fresh process.
The resident memory settles (malloc's per-thread arenas fill to their working set during the first ~20 epochs)
and then stays flat: no growth epoch after epoch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the RSS from /proc (Linux)")
def test_memory_stays_flat_over_many_epochs(tmp_path):
    run = subprocess.run([sys.executable, str(SOAK), "--epochs", "40", "--every", "5", "--backend", "torch",
                          "--folder", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    rss = dict(zip(result["epochs"], result["rss_mb"]))
    assert result["tiles"] > 100 and sorted(rss) == [5, 10, 15, 20, 25, 30, 35, 40]
    # Measured on the 2-core VM: 368 to 408 MB at epoch 5 (when malloc's arenas fill varies from run to run), 414 to
    # 427 at 10, 426 to 432 at 20, 435 to 438 at 40 (from 60 to 100: +0.3 MB).
    assert max(rss[e] for e in (25, 30, 35, 40)) - rss[20] <= 20, rss  # flat once settled
    assert max(rss.values()) - rss[10] <= 64, rss  # within a few tens of MB of epoch 10
