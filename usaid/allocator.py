"""Keep freed memory in the process for reuse, instead of giving it back to the OS after every large tensor.

glibc serves blocks larger than its mmap threshold (at most 32 MiB) with fresh ``mmap`` calls and unmaps them on
free. A DnCNN layer on a 500 x 500 image, or on a batch of 64 patches of 48 x 48, produces 38-64 MiB of activations,
so every layer of every step page-faults its output in again; on the machines measured here that was a third of
the inference time and a fifth of the training step (docs/benchmarks.md). Raising the thresholds through
``mallopt`` (the runtime form of ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``) keeps those blocks on the
heap, where the next layer reuses them. The cost: the process keeps its peak memory until it exits.
"""
import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# where glibc's dynamic thresholds settle in a long-running process (their 64-bit maximum)
GLIBC_SETTLED_MMAP_THRESHOLD = 32 * 1024 * 1024
GLIBC_SETTLED_TRIM_THRESHOLD = 2 * GLIBC_SETTLED_MMAP_THRESHOLD


def _glibc():
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return None
    return ctypes.CDLL(ctypes.util.find_library('c'))


def keep_freed_memory(enabled=True):
    """Keep freed large blocks (``enabled``), or return them as glibc does by default (its dynamic thresholds at
    their settled values, for side-by-side measurements). Returns whether the setting was applied: False where the
    C library is not glibc (nothing to do there)."""
    libc = _glibc()
    if libc is None:
        return False
    if enabled:
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))
    applied = (bool(libc.mallopt(M_MMAP_THRESHOLD, GLIBC_SETTLED_MMAP_THRESHOLD))
               and bool(libc.mallopt(M_TRIM_THRESHOLD, GLIBC_SETTLED_TRIM_THRESHOLD)))
    libc.malloc_trim(0)  # give back what was kept, so that its reuse faults pages in as glibc's defaults would
    return applied
