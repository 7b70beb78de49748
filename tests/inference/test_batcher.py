"""The dynamic batcher in-process: merging, limits, psi groups, cancellation, errors, shutdown."""

from __future__ import annotations

import threading
from concurrent.futures import wait
from pathlib import Path

import pytest
import torch

from models.registry import ModelVersion
from service.inference.batcher import BatcherStopped, DynamicBatcher
from service.inference.cache import LoadedModel
from tests.inference.nets import BrokenGenerator, Gate, GatedGenerator, TinyGenerator


def _model(net: torch.nn.Module, sizes=(1, 2, 4, 8)) -> LoadedModel:
    net.eval()
    return LoadedModel(ModelVersion("t", 1, Path("."), {}), net, torch.device("cpu"), torch.float32, net.z_dim, net.resolution, net.channels, tuple(sizes), 0, 0.0)


@pytest.fixture
def batcher():
    started = []

    def _make(**kw) -> DynamicBatcher:
        b = DynamicBatcher(**{"max_batch": 8, "max_queue_delay_s": 0.0, **kw})
        b.start()
        started.append(b)
        return b

    yield _make
    Gate.reset(open_=True)
    for b in started:
        b.stop()


def _results(futures, timeout=30):
    done, not_done = wait(futures, timeout=timeout)
    assert not not_done, "the batcher did not finish in time"
    return [f.result() for f in futures]


def test_one_submission_is_one_batch_and_matches_direct_generation(batcher) -> None:
    b = batcher()
    model = _model(TinyGenerator())
    images = _results(b.submit(model, [5, 6, 7, 8, 9], 1.0))
    assert dict(b.stats.sizes) == {5: 1}
    direct = model.generate([5, 6, 7, 8, 9], 1.0)
    for got, want in zip(images, direct):
        assert torch.equal(got, want)
    assert images[0].shape == (1, 16, 16)


def test_batches_never_exceed_the_model_limit(batcher) -> None:
    b = batcher()
    _results(b.submit(_model(TinyGenerator()), list(range(20)), 1.0))
    assert dict(b.stats.sizes) == {8: 2, 4: 1}


def test_batching_off_runs_one_image_per_pass(batcher) -> None:
    b = batcher(enabled=False)
    _results(b.submit(_model(TinyGenerator()), [1, 2, 3], 1.0))
    assert dict(b.stats.sizes) == {1: 3}


def test_requests_wait_together_while_a_pass_runs(batcher) -> None:
    """Items that arrive while the worker is busy are merged into the next pass."""
    Gate.reset(open_=False)
    b = batcher()
    model = _model(GatedGenerator())
    first = b.submit(model, [1], 1.0)
    assert Gate.entered.wait(30)
    later = [f for s in range(2, 6) for f in b.submit(model, [s], 1.0)]  # four clients, one image each
    Gate.opened.set()
    _results(first + later)
    assert dict(b.stats.sizes) == {1: 1, 4: 1}


def test_different_psi_values_are_not_merged(batcher) -> None:
    Gate.reset(open_=False)
    b = batcher()
    model = _model(GatedGenerator())
    first = b.submit(model, [1], 1.0)
    assert Gate.entered.wait(30)
    a = b.submit(model, [2, 3], 1.0)
    c = b.submit(model, [2, 3], 0.5)
    Gate.opened.set()
    out_a, out_c = _results(a), _results(c)
    _results(first)
    assert b.stats.batches == 3
    assert not torch.equal(out_a[0], out_c[0])


def test_cancelled_items_cost_no_compute(batcher) -> None:
    Gate.reset(open_=False)
    b = batcher()
    model = _model(GatedGenerator())
    first = b.submit(model, [1], 1.0)
    assert Gate.entered.wait(30)
    doomed = b.submit(model, [2, 3, 4, 5], 1.0)
    assert all(f.cancel() for f in doomed)
    Gate.opened.set()
    _results(first)
    after = b.submit(model, [6], 1.0)
    _results(after)
    assert b.stats.skipped_cancelled == 4
    assert b.stats.images == 2


def test_a_failing_forward_fails_its_items_and_the_worker_goes_on(batcher) -> None:
    b = batcher()
    model = _model(BrokenGenerator())
    bad = b.submit(model, [1, 2], 0.25)
    wait(bad, timeout=30)
    assert all(isinstance(f.exception(), RuntimeError) for f in bad)
    assert len(_results(b.submit(model, [1, 2], 1.0))) == 2


def test_stop_fails_waiting_items(batcher) -> None:
    Gate.reset(open_=False)
    b = batcher()
    model = _model(GatedGenerator())
    running = b.submit(model, [1], 1.0)
    assert Gate.entered.wait(30)
    waiting = b.submit(model, [2, 3], 1.0)
    stopper = threading.Thread(target=b.stop)
    stopper.start()
    for _ in range(3000):
        if b._stopping:
            break
        threading.Event().wait(0.01)
    Gate.opened.set()
    stopper.join(30)
    assert running[0].result(timeout=30).shape == (1, 16, 16)  # the pass under way finishes
    for f in waiting:
        with pytest.raises(BatcherStopped):
            f.result(timeout=30)
    with pytest.raises(BatcherStopped):
        b.submit(model, [4], 1.0)


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        DynamicBatcher(max_batch=0)
    with pytest.raises(ValueError):
        DynamicBatcher(max_queue_delay_s=-1)
