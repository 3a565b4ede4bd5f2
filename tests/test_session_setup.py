"""The test session's own setup (conftest, tests/site): what makes the suite fit its time budget."""

import os
import subprocess
import sys

PROBE = "import jax._src.lru_cache as m; print(m.LRUCache._evict_if_needed.__name__)"


def test_the_cache_eviction_scan_is_skipped_here_and_in_the_command_lines_the_tests_start():
    # If a JAX upgrade moved what tests/site/sitecustomize.py patches, nothing would fail but every
    # cache write would scan the whole cache again (docs/performance.md, session 51): caught here.
    from jax._src import lru_cache

    assert lru_cache.LRUCache._evict_if_needed.__name__ == "_no_eviction_scan"
    child = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert child.stdout.split() == ["_no_eviction_scan"], child.stderr[-2000:]
    # Only in a test session: a process without the session's cache keeps JAX as it is.
    env = {k: v for k, v in os.environ.items() if k != "BACKDOOR_TEST_JAX_CACHE"}
    plain = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, env=env)
    assert plain.stdout.split() == ["_evict_if_needed"], plain.stderr[-2000:]
