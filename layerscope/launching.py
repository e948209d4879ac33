"""Running one job over several processes: seeds, shards, and which device a process takes.

Why its own module: ``sweep``, ``bench`` and ``finetune`` all run under ``accelerate
launch``/``torchrun`` the same way (accelerate's ``PartialState`` names the process, the
work is split by stride, each process takes ``cuda:<local rank>``), and ``eval``/``bench``
parse ``--seeds`` as ``sweep`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from layerscope.errors import UsageError

#: numpy and torch seeds are 64-bit; larger ones would wrap
MAX_SEED = 2**63 - 1
Item = TypeVar("Item")


class SeedError(UsageError):
    """``--seeds`` cannot be read (a usage error)."""


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,3,7"`` and mixes work too."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        low, dash, high = part.partition("-")
        try:
            span = range(int(low), int(high) + 1) if dash else range(int(low), int(low) + 1)
        except ValueError:
            raise SeedError(f"cannot read --seeds {text!r}; use e.g. 0-4 or 0,3,7") from None
        if not span or span.start < 0 or span.stop - 1 > MAX_SEED:
            raise SeedError(f"--seeds {text!r}: seeds are integers from 0 to 2**63-1 and ranges go up, e.g. 0-4")
        if len(span) > 100_000:
            raise SeedError(f"--seeds {text!r} names {len(span):,} seeds; a sweep takes at most 100,000")
        seeds.extend(span)
    if not seeds:
        raise SeedError(f"--seeds {text!r} names no seed; use e.g. 0-4")
    return sorted(set(seeds))


def shard(items: Sequence[Item], rank: int, world_size: int) -> list[Item]:
    """The items process ``rank`` of ``world_size`` takes: a strided split, so every
    process gets a mix of prompts and the shards cover each item exactly once."""
    return list(items[rank::world_size])


def process_state(device: str) -> Any:
    """accelerate's view of the launcher (one process without one); CPU-only when asked.

    The process-group timeout is a week: the final barrier waits for the slowest shard,
    which may finish hours after the others (torch's default would abort after 10-30 min).
    """
    from datetime import timedelta

    from accelerate import PartialState

    return PartialState(cpu=device == "cpu", timeout=timedelta(days=7))


def process_device(device: str, state: Any) -> str:
    """Under a launcher each process takes its own GPU: ``cuda`` -> ``cuda:<local rank>``."""
    if device == "cuda" and state.num_processes > 1:
        return f"cuda:{state.local_process_index}"
    return device
