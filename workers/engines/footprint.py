"""How much memory an engine holds: the RSS of this process and every process below it.

vLLM keeps its weights and KV cache in child processes (its engine core, and spar's engine host),
so a process's own RSS says nothing about what an engine costs: the whole tree does. Used by the
engine-lifecycle test and ``bench/engine_memory.py`` to compare a version swap with a fresh start.
"""

from __future__ import annotations

import psutil


def process_tree() -> tuple[float, int]:
    """(RSS of this process and all its descendants in MB, number of descendants)."""
    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    rss = 0
    for proc in procs:
        try:
            rss += proc.memory_info().rss
        except psutil.NoSuchProcess:  # ended while we looked: it holds nothing any more
            pass
    return rss / 2**20, len(procs) - 1
