"""The dynamic batcher: images requested by many clients merged into shared forward passes.

Triton's dynamic batching, for one device: each image to make is an item (model, seed, psi) with a
future. A single worker thread takes the queue with the oldest waiting item, waits until that queue
holds the model's largest calibrated batch or its oldest item has waited ``max_queue_delay``, and runs
one forward pass for up to that many items. While a pass runs, new items accumulate, so under load
batches fill without waiting at all. Items are only merged when they share the model version and the
truncation psi (psi is one argument of the generator call).

An image's pixels do not depend on its batch: :meth:`LoadedModel.generate` computes every batch at one
of the model's calibrated forward sizes (service/inference/calibrate.py), and latents are drawn per seed
(models/sampling.py).

A cancelled future is skipped when its batch is formed, so a cancelled request stops costing compute.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Sequence

import torch

from models.sampling import to_uint
from service.inference import metrics
from service.inference.cache import LoadedModel
from service.logs import get_logger

log = get_logger("inference")


class BatcherStopped(Exception):
    """The server is shutting down; the image was not made."""


@dataclass(eq=False)
class _Item:
    seed: int
    future: Future
    enqueued: float
    bits: int | None = None
    c: torch.Tensor | None = None  # the condition vector of a conditional model


@dataclass
class BatcherStats:
    """Counters for operators and tests: forward passes, images made, and how often each batch size ran."""

    batches: int = 0
    images: int = 0
    skipped_cancelled: int = 0
    sizes: Counter = field(default_factory=Counter)


class DynamicBatcher:
    def __init__(self, max_batch: int = 32, max_queue_delay_s: float = 0.005, enabled: bool = True):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_queue_delay_s < 0:
            raise ValueError("max_queue_delay_s must not be negative")
        self.max_batch = max_batch
        self.max_queue_delay_s = max_queue_delay_s
        self.enabled = enabled
        self.stats = BatcherStats()
        self._cv = threading.Condition()
        self._queues: dict[tuple[LoadedModel, float], deque[_Item]] = {}
        self._waiting = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._cv:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="synthpacs-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the forward pass under way, then fail every waiting item with :class:`BatcherStopped`."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
        with self._cv:
            pending = [item for q in self._queues.values() for item in q]
            self._queues.clear()
            self._waiting = 0
        for item in pending:
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(BatcherStopped("the inference server is shutting down"))

    def submit(self, model: LoadedModel, seeds: Sequence[int], psi: float, bits: int | None = None, c: torch.Tensor | None = None) -> list[Future]:
        """Queue one image per seed; all of them enter the queue at once. Returns their futures, which
        resolve to (C, H, W) arrays: ``uint8``/``uint16`` pixels when ``bits`` is 8 or 16 (quantized with
        :func:`models.sampling.to_uint`, once per batch), else float32 CPU tensors in [-1, 1].

        ``c``: the (c_dim,) condition vector of a conditional model, for every one of these seeds. Items
        of different conditions share forward passes: the condition is an input per image.
        """
        if bits not in (None, 8, 16):
            raise ValueError("bits must be 8, 16 or None")
        if (model.space is not None) != (c is not None):
            raise ValueError(f"{model.ref} is {'conditional: give its condition' if model.space is not None else 'unconditional: it takes no condition'}")
        now = time.monotonic()
        items = [_Item(int(seed), Future(), now, bits, c) for seed in seeds]
        with self._cv:
            if self._stopping or self._thread is None:
                raise BatcherStopped("the inference server is shutting down")
            self._queues.setdefault((model, float(psi)), deque()).extend(items)
            self._waiting += len(items)
            self._cv.notify_all()
        return [item.future for item in items]

    def waiting(self) -> int:
        with self._cv:
            return self._waiting

    def _limit(self, model: LoadedModel) -> int:
        return min(self.max_batch, model.max_batch) if self.enabled else 1

    def _next_batch(self) -> tuple[LoadedModel, float, list[_Item]] | None:
        """Block until a batch is due; None when stopping."""
        with self._cv:
            while True:
                while not self._stopping and self._waiting == 0:
                    self._cv.wait()
                if self._stopping:
                    return None
                key, queue = min(((k, q) for k, q in self._queues.items() if q), key=lambda kq: kq[1][0].enqueued)
                model, psi = key
                limit = self._limit(model)
                if self.enabled and self.max_queue_delay_s > 0:
                    due = queue[0].enqueued + self.max_queue_delay_s
                    while len(queue) < limit and not self._stopping:
                        remaining = due - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cv.wait(remaining)
                    if self._stopping:
                        return None
                batch = [queue.popleft() for _ in range(min(limit, len(queue)))]
                self._waiting -= len(batch)
                if not queue:
                    del self._queues[key]
                return model, psi, batch

    def _loop(self) -> None:
        while True:
            nxt = self._next_batch()
            if nxt is None:
                return
            model, psi, batch = nxt
            live = [item for item in batch if item.future.set_running_or_notify_cancel()]
            self.stats.skipped_cancelled += len(batch) - len(live)
            if not live:
                continue
            started = time.monotonic()
            for item in live:
                metrics.QUEUE_TIME.observe(started - item.enqueued)
            try:
                c = torch.stack([item.c for item in live]) if model.space is not None else None
                images = model.generate([item.seed for item in live], psi, c)
            except Exception as exc:  # the clients get the error; the worker keeps serving
                log.exception("forward_failed", model=model.ref, batch=len(live))
                if isinstance(exc, torch.cuda.OutOfMemoryError):
                    torch.cuda.empty_cache()
                for item in live:
                    item.future.set_exception(exc)
                continue
            elapsed = time.monotonic() - started
            metrics.BATCH_SIZE.observe(len(live))
            metrics.FORWARD_TIME.labels(model.ref).observe(elapsed)
            metrics.IMAGES.labels(model.ref).inc(len(live))
            self.stats.batches += 1
            self.stats.images += len(live)
            self.stats.sizes[len(live)] += 1
            for item, result in zip(live, _outputs(images, [item.bits for item in live])):
                item.future.set_result(result)


def _outputs(images: torch.Tensor, bits: list[int | None]) -> list:
    """Each image as its item asked: quantized in one vectorized call per bit depth, or as floats."""
    out: list = list(images)
    for depth in {b for b in bits if b is not None}:
        rows = [i for i, b in enumerate(bits) if b == depth]
        pixels = to_uint(images[rows], depth)
        for row, px in zip(rows, pixels):
            out[row] = px
    return out
