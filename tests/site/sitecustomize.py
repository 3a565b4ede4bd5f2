"""The tests' JAX compilation cache without its eviction scan, in every Python process of a test session.

conftest puts this folder first on PYTHONPATH, so Python imports this module at the start of the
xdist workers and of every command line the tests start (and conftest imports it itself for a
one-process run). It does nothing outside a test session (no BACKDOOR_TEST_JAX_CACHE).

Why: the tests share one compilation cache with a size limit, because only then does JAX lock
the cache folder (conftest). But with a limit, JAX's `LRUCache.put` lists and stats every entry
and reads its access-time file before each write, under that lock, to see whether something must
be evicted: O(n) per write, O(n^2) over a session. A test session writes a few thousand entries;
on the 2-core CPU one scan took 174 ms at 1,000 entries and 306 ms at 3,000 (3,000 writes without
it: 3 s), all of it holding the lock that both workers and the command lines wait on
(docs/performance.md, 2026-12-07, session 51). The tests' cache lives for one session and never
nears its limit, so the scan is skipped; the locking stays.

The patch is applied when JAX imports `jax._src.lru_cache` (an import hook), so a process that
never imports JAX (a `time.sleep` child of a test) does not pay for importing it.
"""

import importlib.abc
import importlib.util
import os
import sys

TARGET = "jax._src.lru_cache"


def _no_eviction_scan(self, *, additional_size: int = 0) -> None:
    """LRUCache._evict_if_needed for the tests' cache: nothing to evict (see the module's docstring)."""


def patch(module) -> None:
    """Skip the eviction scan of `module.LRUCache` (module: jax._src.lru_cache)."""
    module.LRUCache._evict_if_needed = _no_eviction_scan


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds jax._src.lru_cache with the other finders and patches it once it has been executed."""

    def find_spec(self, name, path=None, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)  # find it with the other finders, once
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Patch jax._src.lru_cache now if JAX is imported, else when it is."""
    if TARGET in sys.modules:
        patch(sys.modules[TARGET])
    elif not any(type(f).__name__ == "_PatchOnImport" for f in sys.meta_path):  # once, if loaded twice
        sys.meta_path.insert(0, _PatchOnImport())


if os.environ.get("BACKDOOR_TEST_JAX_CACHE"):
    install()
