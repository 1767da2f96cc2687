"""A short coverage-guided fuzz run of the codecs in CI (the long run is recorded in RESULTS.md)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_short_fuzz_run_finds_no_crash():
    corpus = Path(tempfile.mkdtemp(prefix="og-fuzz-"))
    try:
        for seed in (HERE / "corpus").iterdir():
            shutil.copy(seed, corpus)
        result = subprocess.run([sys.executable, str(HERE / "fuzz_lookup.py"), "-runs=15000", "-max_len=512",
                                 "-seed=1", str(corpus)], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Done 15000 runs" in result.stderr
    finally:
        shutil.rmtree(corpus, ignore_errors=True)
