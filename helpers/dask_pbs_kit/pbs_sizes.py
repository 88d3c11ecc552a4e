"""PBS size strings (mem=20gb) and the per-process Dask memory limit."""
from __future__ import annotations

import re

from .errors import BAD_VALUE, KitError

# PBS: an integer, then k/m/g/t/p (powers of 1024), then b or w (8-byte word); any case.
_SIZE = re.compile(r"^([0-9]+)([kmgtp]?)([bw]?)$", re.IGNORECASE)
_SCALE = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
# Below this a worker spends its budget on the interpreter and pauses at once.
MIN_WORKER_MEMORY = 256 * 1024**2


def parse_size(text: str) -> int:
    """Bytes in a PBS size such as '20gb', '20G', '512mb', '4096kb', '8w' or '1000'."""
    match = _SIZE.match(text)
    if not match:
        raise KitError(
            f"{text!r} is not a size PBS accepts (write an integer with an optional "
            "k, m, g, t or p and an optional b or w, e.g. 20gb: no decimals, spaces or 'GiB')",
            BAD_VALUE,
        )
    number, scale, unit = match.groups()
    return int(number) * _SCALE[scale.lower()] * (8 if unit.lower() == "w" else 1)


def format_size(nbytes: int) -> str:
    """The shortest exact PBS spelling of nbytes ('20gb', '1536mb', '1000b')."""
    for suffix in ("pb", "tb", "gb", "mb", "kb"):
        factor = _SCALE[suffix[0]]
        if nbytes and nbytes % factor == 0:
            return f"{nbytes // factor}{suffix}"
    return f"{nbytes}b"


def _percent(text: str) -> float:
    try:
        percent = float(text[:-1])
    except ValueError:
        percent = -1.0
    if not 0 <= percent < 100:
        raise KitError(f"MEMORY_RESERVE={text!r}: a percentage must be in [0, 100)", BAD_VALUE)
    return percent


def parse_reserve(text: str, chunk_bytes: int) -> int:
    """Bytes kept back from a chunk: '10%' of it, or an absolute PBS size ('2gb')."""
    if text.endswith("%"):
        return int(chunk_bytes * _percent(text) / 100)
    return parse_size(text)


def memory_per_process(chunk_bytes: int, processes: int, reserve: str = "10%") -> int:
    """--memory-limit for each of `processes` workers sharing one chunk's memory."""
    if processes < 1:
        raise KitError(f"processes per chunk must be at least 1, not {processes}", BAD_VALUE)
    usable = chunk_bytes - parse_reserve(reserve, chunk_bytes)
    limit = usable // processes if usable > 0 else 0
    if limit < MIN_WORKER_MEMORY:
        raise KitError(
            f"{format_size(chunk_bytes)} per chunk less a reserve of {reserve} leaves "
            f"{limit} bytes for each of {processes} Dask processes (the scheduler counts as "
            f"one on its chunk), below the {format_size(MIN_WORKER_MEMORY)} a worker needs "
            "(ask for more mem= in the select statement, or fewer processes per chunk)",
            BAD_VALUE,
        )
    return limit


def reserve_on_host(text: str, chunks_on_host: int) -> tuple:
    """(parts per million, bytes) to take from a host's memory limit before dividing it:
    a percentage reserve as ppm (bytes 0), an absolute one once per chunk on the host
    (ppm 0). For chunks whose mem no source tells: each task divides its host's limit."""
    if text.endswith("%"):
        return int(round(_percent(text) * 10000)), 0
    return 0, parse_size(text) * chunks_on_host


def check_reserve(text: str) -> None:
    """Refuse a MEMORY_RESERVE that is neither a percentage in [0, 100) nor a PBS size."""
    try:
        reserve_on_host(text, 1)
    except KitError as exc:
        if str(exc).startswith("MEMORY_RESERVE"):
            raise
        raise KitError(f"MEMORY_RESERVE={text!r}: {exc}", exc.code) from None
