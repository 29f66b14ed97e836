import urllib.error

import numpy as np
import pytest
import torch
import torchvision.datasets

from benchmark.api import BenchmarkError
from benchmark.data import batch_stream, load_dataset, to_model_range


def test_mnist16_shape_range_and_determinism():
    digits = load_dataset("mnist16")
    assert digits.shape == (5000, 1, 16, 16) and digits.dtype == torch.uint8
    assert digits.min() == 0 and digits.max() >= 250
    center, border = digits[:, :, 4:12, 4:12].float().mean(), digits[:, :, 0, :].float().mean()
    assert center > 10 * border  # digits are centred, as in MNIST
    assert torch.equal(load_dataset("mnist16"), digits)


def test_load_dataset_returns_an_independent_copy():
    digits = load_dataset("mnist16")
    digits.zero_()
    assert load_dataset("mnist16").max() > 0


def test_unknown_dataset_lists_available_names():
    with pytest.raises(BenchmarkError, match="mnist16.*cifar10"):
        load_dataset("imagenet")


def test_cifar10_offline_is_a_one_line_benchmark_error(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or\nservice not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(BenchmarkError) as info:
        load_dataset("cifar10", root=tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message and "could not be downloaded" in message


def test_cifar10_is_returned_channels_first(monkeypatch, tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            assert train and download and root == str(tmp_path)
            self.data = pixels

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    images = load_dataset("cifar10", root=tmp_path)
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(images[2, 1], torch.from_numpy(pixels[2, :, :, 1]))


def test_range_conversions():
    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8)
    model_range = to_model_range(pixels)
    assert model_range.dtype == torch.float32
    torch.testing.assert_close(model_range, torch.tensor([-1.0, -0.6, 1.0]))


def _numbered_images(n: int) -> torch.Tensor:
    """Image i is filled with the value i, so a batch tells which images it holds."""
    return torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()


def _ids(batch: torch.Tensor) -> list[int]:
    return ((batch[:, 0, 0, 0] + 1) * 127.5).round().long().tolist()


def test_batch_stream_epochs_are_seeded_permutations():
    stream = batch_stream(_numbered_images(12), batch_size=4, seed=3)
    batches = [next(stream) for _ in range(6)]
    assert all(b.shape == (4, 1, 2, 2) and b.dtype == torch.float32 for b in batches)
    assert all(b.min() >= -1 and b.max() <= 1 for b in batches)
    epoch0 = sum((_ids(b) for b in batches[:3]), [])
    epoch1 = sum((_ids(b) for b in batches[3:]), [])
    assert sorted(epoch0) == sorted(epoch1) == list(range(12))
    assert epoch0 != epoch1

    again = batch_stream(_numbered_images(12), batch_size=4, seed=3)
    assert all(torch.equal(next(again), b) for b in batches)
    other_seed = batch_stream(_numbered_images(12), batch_size=4, seed=4)
    assert _ids(next(other_seed)) != _ids(batches[0])


def test_batch_stream_drops_the_incomplete_batch():
    stream = batch_stream(_numbered_images(10), batch_size=4, seed=0)
    epoch = [_ids(next(stream)) for _ in range(2)]
    assert len(set(epoch[0] + epoch[1])) == 8
    assert next(stream).shape[0] == 4


def test_batch_stream_rejects_a_batch_larger_than_the_data():
    with pytest.raises(BenchmarkError, match="batch size"):
        next(batch_stream(_numbered_images(3), batch_size=4, seed=0))
