"""Lanes and the dataset that runs them: batches made on a lane's thread are handed to the consumer's stream
(``handed_over``), on the consumer's thread; each lane's region decoder lives as long as the dataset, across
epochs. The CUDA parts are faked where they only exercise our own ordering; the real ones are marked ``gpu``."""
from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")

import histofast as hf  # noqa: E402
from histofast.data import dataset as dataset_module  # noqa: E402
from histofast.data import lanes  # noqa: E402
from histofast.data._common import BATCH_KEYS  # noqa: E402


@pytest.fixture(scope="module")
def slides(make_slide):
    return [make_slide(1100, 900, seed=41), make_slide(900, 1000, seed=42, tissue_fraction=0.7)]


def _opts(**kw):
    return {**dict(tile_size=128, stride=128, batch_size=8, lanes=2, progress=False), **kw}


class _FakeCuda(torch.Tensor):
    """A tensor that says it is on a GPU and logs the streams it is recorded on."""

    @property
    def is_cuda(self):
        return True

    def record_stream(self, stream):
        self.log.append(("record_stream", stream))


def test_a_gpu_batch_is_read_only_after_its_event_and_kept_for_the_consumers_stream(monkeypatch):
    log = []

    class Stream:
        def wait_event(self, event):
            log.append(("wait", event))

    consumer = Stream()
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: log.append(("stream of", device)) or consumer)
    image = torch.zeros(2, 3, 4, 4).as_subclass(_FakeCuda)
    image.log = log
    batch = {"image": image, "label": torch.zeros(2), lanes.READY: "cut done"}
    out = lanes.handed_over(batch, "cuda:1")
    assert lanes.READY not in out and out["image"] is image
    assert log == [("stream of", "cuda:1"), ("wait", "cut done"), ("record_stream", consumer)]
    cpu = {"image": torch.zeros(1)}
    assert lanes.handed_over(cpu, "cpu") is cpu


def test_batches_are_handed_over_on_the_consumers_thread(slides, monkeypatch):
    """Every batch passes ``handed_over`` in the thread that iterates, never in a lane's."""
    seen = []
    real = dataset_module.handed_over
    monkeypatch.setattr(dataset_module, "handed_over",
                        lambda batch, device: seen.append((threading.get_ident(), device)) or real(batch, device))
    ds = hf.TileDataset(slides, **_opts())
    batches = list(ds)
    assert len(batches) == len(ds) == len(seen) > 2
    assert set(seen) == {(threading.get_ident(), "cpu")}
    assert all(set(b) == set(BATCH_KEYS) for b in batches)


def test_each_lanes_decoder_lives_across_epochs_until_close(slides, monkeypatch):
    made, closed = [], []

    class Counted(dataset_module.RegionReader):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)

        def close(self):
            closed.append(self)
            super().close()

    monkeypatch.setattr(dataset_module, "RegionReader", Counted)
    ds = hf.TileDataset(slides, **_opts(lanes=2))
    first, second = list(ds), list(ds)
    assert len(first) == len(second) == len(ds)
    assert len(made) == 2 and closed == []  # one per lane, kept for the next epoch
    ds.close()
    assert sorted(map(id, closed)) == sorted(map(id, made))
    list(ds)  # iterating again makes new ones
    assert len(made) == 4


@pytest.mark.gpu
def test_a_consumer_on_a_side_stream_gets_the_same_batches(slides):
    """Batches cut on the lanes' streams, read on another: equal to the CPU's (the lanes' events are waited for)."""
    cpu = [{k: v.clone() for k, v in b.items()} for b in hf.Pipeline(slides, backend="torch", **_opts(dtype="uint8"))]
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        gpu = [{k: v.cpu() for k, v in b.items()}
               for b in hf.Pipeline(slides, backend="torch", device="cuda", **_opts(dtype="uint8"))]
    assert len(cpu) == len(gpu)
    for x, y in zip(cpu, gpu):
        assert all(torch.equal(x[k], y[k]) for k in BATCH_KEYS)
