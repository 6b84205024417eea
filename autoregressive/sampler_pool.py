"""Several batches sampled at once, each by a sampler of its own on a thread and CUDA stream of its own.

At the official per-process batch of 32 (64 rows with guidance) a decoding step is hundreds of small
kernels, each of which fills a fraction of the GPU; batches on separate streams run in the room the
others leave. Every worker has its own sampler (its own CUDA graphs and KV cache), so a batch's tokens
are the ones a sampler gives it alone: the same graphs replayed over the same inputs and generator.
`python -m scripts.bench_sample --concurrent-batches 1 2 4` measures what it gains.
"""
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Deque, Iterable, Iterator, Optional, Tuple

import torch

IMAGES_IN_FLIGHT = 128  # the default aim of default_concurrent_batches
MAX_CONCURRENT_BATCHES = 4


def default_concurrent_batches(batch: int) -> int:
    """Batches at once unless told otherwise: enough for IMAGES_IN_FLIGHT images, at most 4 (4 at the
    official 32, 2 at 64, 1 from 128 on). Small batches leave most of the GPU idle in each kernel, and each
    batch at once costs a KV cache, so large batches keep the memory of one (scripts/bench_sample.py
    --concurrent-batches measures speed and memory)."""
    return max(1, min(MAX_CONCURRENT_BATCHES, IMAGES_IN_FLIGHT // batch))


Sampler = Callable[..., torch.Tensor]  # make_sampler's function: (labels, sampling, generator, **kw) -> tokens


class SamplerPool:
    """submit() hands batch j to worker j mod size and returns a Future of its tokens, complete on the
    GPU when the Future is done; imap() runs a sequence of batches, `size` at a time."""

    def __init__(self, make_sampler: Callable[[], Sampler], size: int, device: torch.device):
        self.workers = [_Worker(make_sampler(), device, self, index) for index in range(size)]
        self.submitted = 0
        self._lock = threading.Lock()
        self._running, self._busy_since, self.busy_seconds = 0, 0.0, 0.0

    @property
    def size(self) -> int:
        return len(self.workers)

    @property
    def warm(self) -> bool:
        """Every worker has finished a batch (and so captured its graphs)."""
        return all(worker.finished for worker in self.workers)

    def submit(self, *args, **kwargs) -> Future:
        worker = self.workers[self.submitted % self.size]
        self.submitted += 1
        return worker.submit(args, kwargs)

    def imap(self, jobs: Iterable[Tuple[Any, tuple, dict]]) -> Iterator[Tuple[Any, torch.Tensor]]:
        """(tag, tokens) of each job (tag, sampler args, sampler kwargs), in job order, with `size` batches
        sampling at once; jobs are drawn as room frees up. A worker captures its CUDA graphs in its first
        batch, and a capture wants the GPU to itself: until every worker has, batches run one at a time and
        nothing is yielded, so the caller's own GPU work (a VQ decoder) cannot run beside a capture."""
        in_flight: Deque[Tuple[Any, Future]] = deque()
        for tag, args, kwargs in jobs:
            in_flight.append((tag, self.submit(*args, **kwargs)))
            if not self.warm:
                in_flight[-1][1].result()
            while self.warm and len(in_flight) >= self.size:
                tag, tokens = in_flight.popleft()
                yield tag, tokens.result()
        while in_flight:
            tag, tokens = in_flight.popleft()
            yield tag, tokens.result()

    def close(self) -> None:
        """Finish the batches under way, drop the queued ones, stop the threads."""
        for worker in self.workers:
            worker.stop()
        for worker in self.workers:
            worker.thread.join()

    def _started(self) -> None:
        with self._lock:
            if self._running == 0:
                self._busy_since = time.perf_counter()
            self._running += 1

    def _stopped(self) -> None:
        # busy_seconds: wall time with at least one batch sampling (batches overlap, so not their sum)
        with self._lock:
            self._running -= 1
            if self._running == 0:
                self.busy_seconds += time.perf_counter() - self._busy_since


class _Worker:
    def __init__(self, sampler: Sampler, device: torch.device, pool: SamplerPool, index: int):
        self.sampler, self.pool = sampler, pool
        self.stream: Optional[torch.cuda.Stream] = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.jobs: "queue.Queue[Optional[tuple]]" = queue.Queue()
        self.finished = False
        self.thread = threading.Thread(target=self._run, name=f"sampler-{index}", daemon=True)
        self.thread.start()

    def submit(self, args: tuple, kwargs: dict) -> Future:
        future: Future = Future()
        self.jobs.put((future, args, kwargs))
        return future

    def stop(self) -> None:
        while True:  # drop what has not started
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        self.jobs.put(None)

    def _run(self) -> None:
        if self.stream is not None:
            torch.cuda.set_device(self.stream.device)  # a new thread starts on device 0, not on this rank's
        while (job := self.jobs.get()) is not None:
            future, args, kwargs = job
            if not future.set_running_or_notify_cancel():
                continue
            self.pool._started()
            try:
                future.set_result(self._sample(args, kwargs))
                self.finished = True
            except BaseException as error:  # re-raised by future.result() on the caller's thread
                future.set_exception(error)
            finally:
                self.pool._stopped()

    def _sample(self, args: tuple, kwargs: dict) -> torch.Tensor:
        if self.stream is None:
            return self.sampler(*args, **kwargs)
        self.stream.wait_stream(torch.cuda.current_stream(self.stream.device))  # inputs made on the caller's stream
        for value in (*args, *kwargs.values()):
            if isinstance(value, torch.Tensor) and value.is_cuda:
                value.record_stream(self.stream)  # the caller may drop them before this stream has read them
        with torch.cuda.stream(self.stream):
            tokens = self.sampler(*args, **kwargs)
        self.stream.synchronize()  # done on the GPU: any stream may read the tokens
        return tokens
