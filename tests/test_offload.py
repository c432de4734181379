"""qpasses.offload: values in mapped files are the same values, resident only while read, and
leave no file behind."""

import gc

import pytest
import torch

from qpasses import offload


def resident_file_bytes() -> int:
    """Resident pages of this process that are file or shared-memory backed (bytes)."""
    fields = {}
    for line in open("/proc/self/status"):
        name, _, value = line.partition(":")
        fields[name] = value.split()
    return sum(int(fields[k][0]) * 1024 for k in ("RssFile", "RssShmem") if k in fields)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8, torch.float64])
def test_to_file_keeps_dtype_shape_and_values_and_leaves_no_file(dtype, tmp_path):
    t = (torch.randn(37, 5, generator=torch.Generator().manual_seed(0)) * 9).to(dtype)
    mapped = offload.to_file(t, tmp_path / "scratch")
    assert mapped.dtype == dtype and mapped.shape == t.shape and torch.equal(mapped, t)
    assert list((tmp_path / "scratch").iterdir()) == []  # unlinked once mapped
    offload.release()
    assert torch.equal(mapped, t)  # pages given back are read again from the file


def test_empty_tensor_is_copied():
    assert offload.to_file(torch.empty(0, 3)).shape == (0, 3)


def test_released_pages_stop_counting_and_a_freed_tensor_unmaps(tmp_path):
    before = offload.mapped_bytes()
    mapped = offload.to_file(torch.ones(16 << 20, dtype=torch.float32), tmp_path)  # 64 MiB
    assert offload.mapped_bytes() - before == 64 << 20
    assert float(mapped.sum()) == 16 << 20  # touches every page
    touched = resident_file_bytes()
    offload.release()
    assert touched - resident_file_bytes() > 48 << 20
    del mapped
    gc.collect()
    assert offload.mapped_bytes() == before



def test_release_of_one_tensor_drops_only_its_mapping(tmp_path):
    a, b = (offload.to_file(torch.ones(8 << 20), tmp_path) for _ in range(2))  # 32 MiB each
    float(a.sum()), float(b.sum())
    touched = resident_file_bytes()
    offload.release(a[1:])  # a view: its storage is the mapping
    dropped = touched - resident_file_bytes()
    assert 24 << 20 < dropped < 40 << 20
    offload.release(torch.ones(3))  # not a mapped file's: nothing happens
    assert torch.equal(a, torch.ones(8 << 20)) and torch.equal(b, torch.ones(8 << 20))


def test_an_eager_forward_gives_each_module_s_mapped_weights_back(monkeypatch):
    layers = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    for layer in (layers[0], layers[2]):
        layer.weight = torch.nn.Parameter(offload.to_file(layer.weight), requires_grad=False)
    released, release = [], offload.release
    monkeypatch.setattr(offload, "release", lambda t=None: released.append(t) or release(t))
    x = torch.randn(3, 4)
    expected = layers(x)
    with offload.released_by_module(layers):
        assert torch.equal(layers(x), expected)
    ids = [id(t) for t in released]
    assert ids.index(id(layers[0].weight)) < ids.index(id(layers[2].weight))
    released.clear()
    layers(x)
    assert released == []  # hooks removed after the block


def test_release_finds_the_mapping_behind_a_numpy_view(tmp_path):
    mapped = offload.to_file(torch.ones(8 << 20), tmp_path)  # 32 MiB
    view = mapped.numpy()[4 << 20:]  # starts in the middle of the mapping
    float(mapped.sum())
    touched = resident_file_bytes()
    offload.release(view)  # the whole mapping
    assert touched - resident_file_bytes() > 24 << 20
    offload.release("not an array")  # left alone
