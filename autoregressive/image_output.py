"""Sampled images from the GPU to disk while the GPU samples the next batch (sample_c2i_ddp.py).

A batch's tokens are decoded to pixels on a CUDA side stream and copied to pinned host memory, so the
VQ decoder runs beside the next batch's sampling; worker threads then wait for the copy and write the
images: one PNG per sample if asked, and one .npy file per batch that packing reads back (much faster
than decoding PNGs). Every file is written atomically and names the samples it holds, so a rerun skips
what is done, and a sample's pixels are the same whichever way they were stored.
"""
import os
import queue
import re
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from autoregressive.render import check_finite, tokens_to_pixels
from autoregressive.utils.files import write_atomic

BATCH_FILE = re.compile(r"batch-(\d{6,})-(\d{6,})\.npy")  # samples [first, end) of a run without PNGs


def png_path(folder: str, index: int) -> str:
    return os.path.join(folder, f"{index:06d}.png")


def batch_path(folder: str, first: int, end: int) -> str:
    return os.path.join(folder, f"batch-{first:06d}-{end:06d}.npy")


def stored_batches(folder: str) -> Dict[int, int]:
    """first -> end of the batch files in folder."""
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return dict(sorted((int(m[1]), int(m[2])) for m in map(BATCH_FILE.fullmatch, names) if m))


class StageClock:
    """Seconds spent per stage, summed over calls and threads; time.time() marks for the start-up end."""

    def __init__(self):
        self.seconds: Dict[str, float] = defaultdict(float)
        self.marks: Dict[str, float] = {}
        self.written: List[List[float]] = []  # [time.time(), samples] of each batch once its files are on disk
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, time.time())

    def batch_written(self, samples: int) -> None:
        with self._lock:
            self.written.append([time.time(), samples])


class PendingImages:
    """One batch's images on their way to the host: wait() gives them as (B, H, W, 3) uint8 numpy."""

    def __init__(self, tokens: torch.Tensor, render: Callable, clock: StageClock):
        self.clock = clock
        if not tokens.is_cuda:
            start = time.perf_counter()
            images, finite = render(tokens)
            self.images, self.finite, self.done = images.numpy(), bool(finite), None
            clock.add("vq_decode", time.perf_counter() - start)
            return
        side = decoding_stream(tokens.device)
        side.wait_stream(torch.cuda.current_stream(tokens.device))
        tokens.record_stream(side)  # the sampler's allocator must not reuse them before the decoder has read them
        with torch.cuda.stream(side):
            self.started = torch.cuda.Event(enable_timing=True)
            self.started.record(side)
            images, finite = render(tokens)
            host = torch.empty(images.shape, dtype=images.dtype, pin_memory=True)
            host.copy_(images, non_blocking=True)
            self.finite_host = torch.empty((), dtype=torch.bool, pin_memory=True)
            self.finite_host.copy_(finite, non_blocking=True)
            self.done = torch.cuda.Event(enable_timing=True)
            self.done.record(side)
        self.host, self.images, self.finite = host, host.numpy(), None  # host: the pinned memory stays ours
        self._lock = threading.Lock()

    def wait(self) -> np.ndarray:
        if self.finite is None:
            with self._lock:  # the first of the batch's writers to get here books the decoder's time
                if self.finite is None:
                    self.done.synchronize()
                    self.clock.add("vq_decode", self.started.elapsed_time(self.done) / 1e3)
                    self.finite = bool(self.finite_host)
        check_finite(self.finite)
        return self.images


_streams: Dict[torch.device, torch.cuda.Stream] = {}


def decoding_stream(device: torch.device) -> torch.cuda.Stream:
    if device not in _streams:
        _streams[device] = torch.cuda.Stream(device)
    return _streams[device]


class ImageWriter:
    """Writes batches of samples on worker threads, one batch behind the caller: put() returns once the
    batch before the previous one is on disk (so host memory holds at most two batches of images) and
    re-raises the first error of its writes.

    One .npy per batch; with pngs=True also one PNG per sample through write_png(image, path), the batch
    file then written after the last of its PNGs, so that a batch file always means a finished batch."""

    def __init__(self, folder: str, pngs: bool, write_png: Callable[[np.ndarray, str], None], clock: StageClock,
                 workers: int):
        self.folder, self.pngs, self.write_png, self.clock = folder, pngs, write_png, clock
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.in_flight: List[List[Future]] = []
        self._lock = threading.Lock()

    def finished(self, indices: Sequence[int], batches: Dict[int, int]) -> bool:
        """Whether every sample of indices is on disk, as a PNG or in one of batches (stored_batches)."""
        covered = lambda i: any(first <= i < end for first, end in batches.items())
        return all(covered(i) or os.path.exists(png_path(self.folder, i)) for i in indices)

    def put(self, first: int, count: int, pending: PendingImages) -> None:
        """Samples first .. first + count - 1, rows [0, count) of the pending batch."""
        if self.pngs:
            left = [count]  # PNGs of the batch still to write
            jobs = [self.pool.submit(self._png, pending, row, first, count, left) for row in range(count)]
        else:
            jobs = [self.pool.submit(self._batch_file, pending, first, count)]
        self.in_flight.append(jobs)
        while len(self.in_flight) > 2:
            self._wait(self.in_flight.pop(0))

    def close(self) -> None:
        """Wait for every write; re-raise the first error."""
        try:
            while self.in_flight:
                self._wait(self.in_flight.pop(0))
        finally:
            self.pool.shutdown(wait=True)  # on an error, the writes under way still finish

    @staticmethod
    def _wait(jobs: List[Future]) -> None:
        for job in jobs:
            job.result()

    def _png(self, pending: PendingImages, row: int, first: int, count: int, left: List[int]) -> None:
        images = pending.wait()
        start = time.perf_counter()
        self.write_png(images[row], png_path(self.folder, first + row))
        self.clock.add("write", time.perf_counter() - start)
        with self._lock:
            left[0] -= 1
            last = left[0] == 0
        if last:  # the batch's PNGs are all on disk: its pixels in one file too, which packing reads faster
            self._batch_file(pending, first, count)

    def _batch_file(self, pending: PendingImages, first: int, count: int) -> None:
        images = pending.wait()[:count]
        start = time.perf_counter()
        write_atomic(batch_path(self.folder, first, first + count), lambda tmp: np.save(tmp, images))
        self.clock.add("write", time.perf_counter() - start)
        self.clock.batch_written(count)


class DecoderThread:
    """Decodes each batch of tokens on a thread of its own and hands the images to the writer, so the
    sampling thread never waits for the VQ decoder, not even while it compiles on the first batch: that
    runs beside the sampling of the next batches, whose tokens queue up meanwhile (small: B x N ids).
    A sampler must not capture CUDA graphs while this thread works; the fast sampler captures its
    graphs in its first call only, and sample_c2i_ddp.py hands this thread nothing until every sampler of
    its pool has made that call."""

    def __init__(self, render: Callable, writer: "ImageWriter", clock: StageClock, max_batches: int = 256):
        self.render, self.writer, self.clock = render, writer, clock
        self.batches: queue.Queue = queue.Queue(maxsize=max_batches)
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="vq-decoder", daemon=True)
        self.thread.start()

    def put(self, first: int, count: int, tokens: torch.Tensor) -> None:
        """Queue samples first .. first + count - 1, rows [0, count) of tokens; re-raises an earlier error."""
        while True:
            self._raise()
            try:
                self.batches.put((first, count, tokens), timeout=1.0)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Decode and hand over everything queued; re-raise the first error."""
        self.batches.put(None)
        self.thread.join()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while (item := self.batches.get()) is not None:
            if self.error is None:  # after an error, only drain the queue
                try:
                    first, count, tokens = item
                    self.writer.put(first, count, PendingImages(tokens, self.render, self.clock))
                except BaseException as error:  # re-raised on the sampling thread
                    self.error = error


def default_workers(local_processes: int) -> int:
    """Writer threads per process: the machine's cores shared by the processes on it, 2 to 16."""
    return max(2, min(16, (os.cpu_count() or 8) // max(local_processes, 1)))


def render_function(grid: int, vq, vocab_size: int, out_size: Optional[int]) -> Callable:
    return lambda tokens: tokens_to_pixels(tokens, grid, vq, vocab_size, out_size)
