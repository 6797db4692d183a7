"""Decoded training images kept in memory shared with the DataLoader's workers, so that a patch costs a crop instead
of decoding its whole image.

:class:`ImageCache` holds the images as ``cv2.imdecode`` returns them (uint8, or uint16 for 16-bit files: the
conversion to float happens after the crop, on the patch). The memory is anonymous (``memfd_create``): nothing is
written to any file system and ``/dev/shm``'s size (64 MB in a default Docker container) does not limit it; it is
reserved in full before it is filled (``posix_fallocate``), so that running out of memory is an error at
construction, never a bus error later. Workers made by ``fork`` share the mapping; workers made by ``spawn`` or
``forkserver`` reopen it through ``/proc/<pid>/fd``; a worker that cannot reopen it decodes, with a warning: the cache
changes speed, never data. It lives as long as the dataset that built it, so a file changed between two runs is never
served stale.
"""
import mmap
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_GIB = 2**30


def available_memory():
    """Bytes this process may still use: ``MemAvailable``, and the cgroup's limit where one is set; None when
    unknown."""
    found = []
    try:
        with open('/proc/meminfo') as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith('MemAvailable:')]
    except OSError:
        pass
    try:
        with open('/sys/fs/cgroup/memory.max') as f_max, open('/sys/fs/cgroup/memory.current') as f_current:
            limit = f_max.read().strip()
            if limit != 'max':
                found.append(int(limit) - int(f_current.read()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def cache_limit(cache_bytes):
    """``(limit, why)``: ``cache_bytes``, lowered to half the memory available shared by the processes of this node
    (torchrun's ``LOCAL_WORLD_SIZE``), which all build their own cache at the same time."""
    available = available_memory()
    if available is None:
        return cache_bytes, f'cache_bytes {format_bytes(cache_bytes)}'
    processes = max(1, int(os.environ.get('LOCAL_WORLD_SIZE', '1') or 1))
    share = available // 2 // processes
    if share < cache_bytes:
        return share, (f'half of the {format_bytes(available)} of memory available'
                       + (f' shared by {processes} processes' if processes > 1 else '')
                       + f', below cache_bytes {format_bytes(cache_bytes)}')
    return cache_bytes, f'cache_bytes {format_bytes(cache_bytes)}'


def format_bytes(count):
    if count >= _GIB / 10:
        return f'{count / _GIB:.2f} GiB'
    return f'{count / 2**20:.1f} MiB' if count >= 2**20 / 10 else f'{count:,} bytes'


def _anonymous_memory(size):
    """``(fd, mapping)`` of ``size`` bytes of anonymous shared memory, reserved in full; fd is None where
    ``memfd_create`` does not exist (then only forked workers share it)."""
    if not hasattr(os, 'memfd_create'):
        return None, mmap.mmap(-1, size)
    fd = os.memfd_create('usaid-image-cache', os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        os.posix_fallocate(fd, 0, size)  # ENOSPC/ENOMEM now rather than SIGBUS when a page is first touched
        return fd, mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        raise


class ImageCache:
    """Decoded images in one block of shared memory, by path; read-only once built.

    Args:
        paths (list[str]): The images to decode, in order of preference.
        planned (dict[str, int]): Bytes each decoded image will take (from its header); images without an entry
            are not cached.
        limit (int): At most this many bytes are cached; images beyond it (in ``paths`` order) are not.
        read (callable): ``read(path)`` -> the decoded image (an array), or raises ``ValueError``/``OSError``;
            called from several threads at once.
        threads (int): Threads decoding at construction (OpenCV and file reads release the GIL).
    """

    def __init__(self, paths, planned, limit, read, threads=4):
        chosen, total = [], 0
        for path in paths:
            size = planned.get(path)
            if size and total + size <= limit:
                chosen.append((path, total, size))
                total += size
        self.size, self.mapped, self.entries, self.skipped = total, total, {}, len(paths) - len(chosen)
        self.fd, self.owner, self._mapping, self._buffer = None, os.getpid(), None, None
        self.unreachable = None  # set in a worker that could not open the memory
        started = time.perf_counter()
        if not chosen:
            self.seconds = 0.
            return
        self.fd, self._mapping = _anonymous_memory(total)
        self._buffer = np.frombuffer(self._mapping, np.uint8)

        def fill(entry):
            path, offset, size = entry
            try:
                img = read(path)
            except (ValueError, OSError):
                return None  # decoded again when used, where the dataset reports it
            if img.nbytes != size:  # the header did not tell (an LMDB without bit depth): decoded when used
                return None
            self._buffer[offset:offset + size] = img.reshape(-1).view(np.uint8)
            return path, (offset, offset + size, img.shape, img.dtype.str)

        with ThreadPoolExecutor(max(1, threads)) as pool:
            self.entries = dict(filter(None, pool.map(fill, chosen)))
        self.skipped = len(paths) - len(self.entries)
        self.size = sum(end - start for start, end, _, _ in self.entries.values())
        self.seconds = time.perf_counter() - started
        self._buffer.flags.writeable = False

    def get(self, path):
        """The decoded image of ``path`` (a read-only view into the cache), or None if it is not cached."""
        entry = self.entries.get(path)
        if entry is None:
            return None
        start, end, shape, dtype = entry
        return self._buffer[start:end].view(dtype).reshape(shape)

    def __len__(self):
        return len(self.entries)

    def __getstate__(self):
        # pickled for a worker started by spawn or forkserver: it reopens the memory through the owner's fd
        state = self.__dict__.copy()
        state['_mapping'] = state['_buffer'] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        owner_fd, self.fd, self.unreachable = self.fd, None, None  # a copy never owns (nor closes) the memory
        if not self.entries:
            return
        try:
            if owner_fd is None:
                raise OSError('no memfd_create on this system: only forked workers share the cache')
            fd = os.open(f'/proc/{self.owner}/fd/{owner_fd}', os.O_RDONLY)
            try:
                if os.fstat(fd).st_size != self.mapped:
                    raise OSError(f'/proc/{self.owner}/fd/{owner_fd} is not the cache')
                self._mapping = mmap.mmap(fd, self.mapped, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
        except OSError as error:
            self.entries, self.unreachable = {}, str(error)
            return
        self._buffer = np.frombuffer(self._mapping, np.uint8)

    def close(self):
        """Free the memory (in this process; workers holding it keep it until they end)."""
        self.entries, self._buffer = {}, None
        if self._mapping is not None:
            try:
                self._mapping.close()
            except BufferError:  # a patch still views it: unmapped when the last view goes
                pass
            self._mapping = None
        if self.fd is not None and self.owner == os.getpid():
            os.close(self.fd)
            self.fd = None

    def __del__(self):
        self.close()
