"""Argument checks shared by every entry point: ``check_device`` resolves a bare "cuda" to the caller's current
device once, at construction (CUDA's current device is per thread: a lane or decoder thread starts on device 0).
The CUDA runtime is faked: these run on the CPU."""
from __future__ import annotations

import threading

import pytest

import histofast
from histofast import _C, build
from histofast.checks import check_device
from histofast.errors import HistofastError


@pytest.fixture
def two_gpus(monkeypatch):
    """Two CUDA devices, the caller's current one being 1 (as after DDP's ``torch.cuda.set_device(local_rank)``)
    in this thread only, as CUDA keeps it; device 0 in every other thread."""
    torch = pytest.importorskip("torch")
    main = threading.get_ident()
    monkeypatch.setattr(build, "cuda_available", lambda: True)
    monkeypatch.setattr(_C, "cuda_device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1 if threading.get_ident() == main else 0)


def test_a_bare_cuda_is_the_callers_current_device_resolved_at_once(two_gpus):
    assert check_device("cuda") == "cuda:1"
    seen = []
    resolved = check_device("cuda")
    worker = threading.Thread(target=lambda: seen.append((resolved, check_device("cuda"))))
    worker.start()
    worker.join()
    assert seen == [("cuda:1", "cuda:0")]  # what a thread of our own would have picked had it been left "cuda"
    assert check_device("cuda:0") == "cuda:0" and check_device("cuda:1") == "cuda:1"
    assert check_device("cpu") == "cpu"


@pytest.mark.parametrize("device,message", [
    ("cuda:2", "device='cuda:2': there are 2 CUDA devices here (indices 0 to 1)"),
    ("cuda:x", "device='cuda:x': expected 'cpu', 'cuda' or 'cuda:<index>'"),
    ("cuda:-1", "device='cuda:-1': expected"),
    ("cuda:", "device='cuda:': expected"),
    ("gpu", "device='gpu': expected"),
    (0, "device=0: expected"),
])
def test_bad_devices_are_named(two_gpus, device, message):
    with pytest.raises(HistofastError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_device(device)


def test_the_pipeline_and_its_dataset_keep_the_resolved_device(two_gpus, make_slide):
    """Constructed after ``set_device(1)``: the Pipeline and its TileDataset hold "cuda:1", so DALI's device_id,
    the lanes' buffers and the decoders' streams are on device 1 whichever thread later uses them."""
    grid = histofast.tile_grid(make_slide(1024, 1024, seed=3), 256)  # scored on the CPU: nothing runs on "cuda"
    pipe = histofast.Pipeline([grid], 256, backend="torch", device="cuda", batch_size=4)
    assert pipe.device == pipe.tile_dataset.device == "cuda:1"
