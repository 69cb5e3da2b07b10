"""Deterministic randomness keyed by *what* is being decided, not by call order.

Every random choice (kept judgment, negative per prompt, capped subsets) and every sampling seed is
derived from the run seed plus stable keys (prompt id, response index, attempt...). The same run
therefore makes the same choices whether a prompt lands in shard 0 or shard 7, and whether a
shard runs alone or is retried.
"""

from __future__ import annotations

import hashlib
import random


def derive_seed(root: int, *keys: object) -> int:
    """A 63-bit seed from the run seed and any stable keys (str/int)."""
    blob = "\x1f".join([str(root), *map(str, keys)]).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") >> 1


def rng_for(root: int, *keys: object) -> random.Random:
    """A private ``random.Random`` for one decision."""
    return random.Random(derive_seed(root, *keys))


def text_key(*texts: str) -> str:
    """A short stable digest of texts, used as a seed key and cache key."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\x00")
    return h.hexdigest()[:24]
