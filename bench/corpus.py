"""A generated text corpus for the scale-out benchmark: deterministic, any size.

Words come from a 20,000-word made-up vocabulary with Zipf-like frequencies, 12 words a
line; a 16 MiB block is generated once and every file is that block with its lines
rotated by a different offset (so files differ, and generating 512 MiB takes seconds).
"""
from __future__ import annotations

import itertools
import os
import random

BLOCK = 16 * 1024 * 1024
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "qu", "br", "st", "ae", "ou"]


def vocabulary(size: int, rng: random.Random) -> list:
    words: set = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def block(rng: random.Random) -> list:
    vocab = vocabulary(20_000, rng)
    weights = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(vocab))))
    lines, size = [], 0
    while size < BLOCK:
        line = " ".join(rng.choices(vocab, cum_weights=weights, k=12)) + ".\n"
        lines.append(line)
        size += len(line)
    return lines


def ensure(folder: str, megabytes: int) -> list:
    """The corpus's files in folder, made unless already there with the same size."""
    count = max(1, -(-megabytes * 1024 * 1024 // BLOCK))
    names = [os.path.join(folder, f"part-{i:03d}.txt") for i in range(count)]
    if all(os.path.exists(n) and os.path.getsize(n) >= BLOCK for n in names):
        return names
    os.makedirs(folder, exist_ok=True)
    lines = block(random.Random(20261128))
    step = max(1, len(lines) // count)
    for i, name in enumerate(names):
        cut = (i * step) % len(lines)
        with open(name, "w", encoding="utf-8") as fh:
            fh.writelines(lines[cut:])
            fh.writelines(lines[:cut])
    return names
