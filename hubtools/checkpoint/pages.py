"""File ranges as memory without first-touch page faults.

On Linux every first touch of fresh anonymous memory costs a page fault per 4 KiB (on a VM, also a
trip to the host): 0.5-1 s per GB, more than copying the same bytes from the page cache. `map_range`
maps a file range privately (copy-on-write) from the page cache instead: no copy, no fresh memory,
faulted in with one call. (Faulting fresh memory in on a worker thread while transformers imports was
measured too: it slowed the imports more than it saved.)
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from hubtools.errors import CorruptFileError

MADV_POPULATE_READ = 22  # linux/mman.h (5.14+); Python's mmap module names it only from 3.14


def _advise(mapped: mmap.mmap, *advice: int) -> bool:
    """Apply the first advice the kernel accepts; False if none was."""
    for option in advice:
        try:
            mapped.madvise(option)
            return True
        except OSError:  # an older kernel: EINVAL
            continue
    return False


def map_range(fd: int, path: Path, offset: int, length: int) -> np.ndarray:
    """`length` bytes of the open file `fd` (named `path` in errors) from `offset`, as a uint8 array backed
    by a private copy-on-write mapping: writes stay private; the mapping lives as long as the array.

    Raises:
        CorruptFileError: the file is now shorter than the range (it changed after it was indexed).
    """
    size = os.fstat(fd).st_size
    if offset + length > size:
        raise CorruptFileError(
            f"{path}: expected at least {offset + length} bytes (a tensor ends there), found {size}: "
            "the file is truncated or changed while it was read"
        )
    if length == 0:
        return np.empty(0, dtype=np.uint8)
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    mapped = mmap.mmap(fd, offset + length - start, offset=start, access=mmap.ACCESS_COPY)
    _advise(mapped, MADV_POPULATE_READ, mmap.MADV_WILLNEED)  # fault in now; start readahead when cold
    return np.frombuffer(mapped, dtype=np.uint8, count=length, offset=offset - start)
