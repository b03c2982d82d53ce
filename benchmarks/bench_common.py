"""Pieces the benchmark scripts share: the process's peak and live memory, a median and a stand-in task."""
import ctypes
import resource
import threading
import time


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (bytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def median(values) -> float:
    """The median of ``values`` (the mean of the two middle ones for an even count)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


class LiveMemorySampler:
    """Peak of the bytes glibc's allocator has handed out and not got back (``mallinfo2``: heap
    chunks in use plus mapped chunks), sampled every ``interval`` seconds from a thread.

    Unlike the resident size, this does not count freed memory that a fragmented heap keeps, so
    it compares what two models' training needs independently of where the allocator placed their
    buffers. A sampled peak can miss a buffer that lives shorter than the interval. ``peak_bytes``
    is None where glibc's ``mallinfo2`` is not available (then only the resident peak is reported).
    """

    def __init__(self, interval: float = 0.0002):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallinfo2.restype = _MallInfo2
            self._mallinfo = libc.mallinfo2
        except (OSError, AttributeError):
            self._mallinfo = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def live_bytes(self) -> int:
        info = self._mallinfo()
        return info.uordblks + info.hblkhd

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.live_bytes())
            time.sleep(self.interval)

    def __enter__(self):
        if self._mallinfo is not None:
            self.start = self.live_bytes()
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._mallinfo is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.live_bytes())

    @property
    def peak_bytes(self):
        """Peak live bytes above those live when the sampler started, or None."""
        return None if self._mallinfo is None else self.peak - self.start


class DictionaryTask:
    """What ``build_model`` reads from a task: one dictionary of ``vocab`` symbols (the special ones,
    then ``prefix0``, ``prefix1``, ...) as source and target."""

    def __init__(self, vocab: int, prefix: str = "w"):
        from fairseq.data import Dictionary

        dictionary = Dictionary()
        for i in range(vocab - len(dictionary)):
            dictionary.add_symbol("{}{}".format(prefix, i))
        self.source_dictionary = self.target_dictionary = dictionary
