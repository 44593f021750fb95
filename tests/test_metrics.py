"""ddpm_lite.metrics on cases whose answer is known in advance.

Fréchet distance against its closed form, the shipped digits classifier on held-out real digits,
precision/recall at their extremes, and the error messages for bad input. Fast: everything runs on small
tensors or the 1797 bundled digits. The classifier's own files and training are in test_classifier.py,
bits/dim in test_diffusion.py.
"""

import numpy as np
import pytest
import torch

from ddpm_lite import classifier, metrics
from ddpm_lite.data import load_dataset


@pytest.fixture(scope="module")
def digits_test():
    ds = load_dataset("digits", split="test")
    return ds.images.float(), ds.labels.long()


@pytest.fixture(scope="module")
def digits_train():
    ds = load_dataset("digits", split="train")
    return ds.images.float(), ds.labels.long()


# -- Fréchet distance ----------------------------------------------------------------------------------------


def closed_form_fd(mu1, s1, mu2, s2):
    """‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) with scipy's general matrix square root (an independent route)."""
    from scipy.linalg import sqrtm

    covmean = sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_distance_of_identical_sets_is_zero():
    feats = torch.randn(300, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert metrics.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-9)
    # and numpy input works the same way
    assert metrics.frechet_distance(feats.numpy(), feats.numpy()) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_from_stats_diagonal_closed_form():
    # diagonal covariances: Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) = Σᵢ (√a_i − √b_i)²
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0, 3.0]), torch.tensor([1.0, 1.0, 0.0, 3.5])
    a, b = torch.tensor([1.0, 4.0, 0.25, 9.0]), torch.tensor([4.0, 1.0, 0.25, 1.0])
    expected = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())  # 5.25 + 6.0 = 11.25
    assert expected == pytest.approx(11.25)
    got = metrics.frechet_distance_from_stats(mu1, torch.diag(a), mu2, torch.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)
    # symmetric in its two arguments
    assert metrics.frechet_distance_from_stats(mu2, torch.diag(b), mu1, torch.diag(a)) == pytest.approx(expected)


def test_frechet_distance_from_stats_full_covariances_match_scipy_sqrtm():
    rng = np.random.default_rng(0)
    d = 6
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)  # non-commuting SPD matrices
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    got = metrics.frechet_distance_from_stats(mu1, s1, mu2, s2)
    assert got == pytest.approx(closed_form_fd(mu1, s1, mu2, s2), rel=1e-8)


def test_frechet_distance_of_shifted_scaled_gaussian_samples():
    # samples of N(0, I) and N(μ, s² I): FD → ‖μ‖² + D (1 − s)² as N grows
    g = torch.Generator().manual_seed(1)
    d, n, s = 4, 40_000, 2.0
    mu = torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = mu + s * torch.randn(n, d, generator=g, dtype=torch.float64)
    expected = float((mu ** 2).sum()) + d * (1 - s) ** 2  # 2.25 + 4 = 6.25
    assert metrics.frechet_distance(x, y) == pytest.approx(expected, rel=0.03)


def test_feature_statistics_are_mean_and_unbiased_covariance():
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mu, sigma = metrics.feature_statistics(x)
    assert torch.allclose(mu, x.mean(0))
    assert torch.allclose(sigma, torch.cov(x.T))


def test_frechet_distance_rejects_mismatched_features():
    with pytest.raises(ValueError, match="same D"):
        metrics.frechet_distance(torch.zeros(10, 3), torch.zeros(10, 4))
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.feature_statistics(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="covariance"):
        metrics.frechet_distance_from_stats(torch.zeros(3), torch.eye(2), torch.zeros(3), torch.eye(3))


# -- the shipped classifier ----------------------------------------------------------------------------------


def test_shipped_classifier_is_accurate_on_held_out_digits(digits_test):
    images, labels = digits_test
    assert images.shape[1:] == (1, 8, 8) and len(images) > 300
    acc = metrics.sample_accuracy(images, labels)
    assert acc >= 0.97, f"held-out accuracy {acc:.4f} < 0.97"
    per_class = metrics.per_class_accuracy(images, labels)
    assert per_class.shape == (10,) and float(per_class.min()) >= 0.9


def test_classify_returns_labels_and_probabilities(digits_test):
    images, _ = digits_test
    labels, probs = metrics.classify(images[:20], return_probs=True)
    assert labels.dtype == torch.long and labels.shape == (20,)
    assert probs.shape == (20, 10)
    assert torch.allclose(probs.sum(1), torch.ones(20), atol=1e-5)
    assert torch.equal(probs.argmax(1), labels)


def test_real_test_images_score_like_real_data(digits_train, digits_test):
    train_images, _ = digits_train
    test_images, test_labels = digits_test
    out = metrics.evaluate_samples(test_images, test_labels, real_images=train_images)
    assert out["accuracy"] >= 0.97
    assert out["n_samples"] == len(test_images)
    # real held-out digits are as close to the real data as another real half of the same size
    assert out["fd"] < 3 * out["fd_real_floor"] + 1.0, out
    assert out["precision"] > 0.8 and out["recall"] > 0.8, out
    # uniform noise is far away on every count
    noise = torch.rand(len(test_images), 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    bad = metrics.evaluate_samples(noise, test_labels, real_images=train_images)
    assert bad["fd"] > 10 * out["fd"] and bad["fd"] > out["fd"] + 10, (bad, out)
    assert bad["precision"] < 0.2 and bad["accuracy"] < 0.5, bad


def test_real_floor_is_small_and_reproducible(digits_train):
    images, _ = digits_train
    a = metrics.real_floor(300, real_images=images, seed=0)
    assert a == metrics.real_floor(300, real_images=images, seed=0)
    assert 0 < a < metrics.feature_frechet_distance(images[:300], -images[:300])
    with pytest.raises(ValueError, match="disjoint halves"):
        metrics.real_floor(len(images), real_images=images)


# -- precision and recall ------------------------------------------------------------------------------------


def test_precision_recall_of_a_set_against_itself_is_one():
    feats = torch.randn(200, 8, generator=torch.Generator().manual_seed(3))
    pr = metrics.precision_recall(feats, feats, k=3)
    assert pr.precision == 1.0 and pr.recall == 1.0


def test_precision_recall_of_disjoint_sets_is_zero():
    g = torch.Generator().manual_seed(4)
    real = torch.randn(200, 8, generator=g)
    fake = torch.randn(200, 8, generator=g) + 50.0  # far away from every real point
    pr = metrics.precision_recall(real, fake, k=3)
    assert pr.precision == pytest.approx(0.0, abs=1e-12) and pr.recall == pytest.approx(0.0, abs=1e-12)


def test_precision_recall_separate_quality_from_coverage():
    # fakes drawn from only half of the real manifold: high precision (all plausible), low recall (half missing)
    g = torch.Generator().manual_seed(5)
    real = torch.cat([torch.randn(300, 2, generator=g), torch.randn(300, 2, generator=g) + 20])
    fake = torch.randn(300, 2, generator=g)
    pr = metrics.precision_recall(real, fake, k=3)
    assert pr.precision > 0.9
    assert 0.35 < pr.recall < 0.55


def test_precision_recall_rejects_bad_k():
    with pytest.raises(ValueError, match="k: expected"):
        metrics.precision_recall(torch.randn(5, 2), torch.randn(5, 2), k=5)


# -- clear errors for bad input ------------------------------------------------------------------------------


def test_wrong_image_shape_names_the_expected_shape():
    with pytest.raises(ValueError, match=r"B×1×8×8.*\[4, 3, 8, 8\]"):
        metrics.classify(torch.zeros(4, 3, 8, 8))
    with pytest.raises(ValueError, match=r"B×1×8×8"):
        metrics.sample_accuracy(torch.zeros(4, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"B×1×8×8"):
        metrics.feature_frechet_distance(torch.zeros(4, 1, 28, 28), torch.zeros(4, 1, 28, 28), classifier="digits")
    with pytest.raises(ValueError, match=r"B×1×28×28.*\[4, 1, 8, 8\]"):
        metrics.classify(torch.zeros(4, 1, 8, 8), classifier="mnist5k")


def test_bad_values_and_labels_are_explained():
    with pytest.raises(ValueError, match=r"x / 127.5 - 1"):
        metrics.classify(torch.full((2, 1, 8, 8), 255.0))
    with pytest.raises(ValueError, match="NaN"):
        metrics.classify(torch.full((2, 1, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="at least one image"):
        metrics.classify(torch.zeros(0, 1, 8, 8))
    with pytest.raises(ValueError, match=r"expected 3 integer class labels"):
        metrics.sample_accuracy(torch.zeros(3, 1, 8, 8), torch.zeros(4, dtype=torch.long))


def test_metrics_reexports_the_classifier_loader():
    # the notebooks call metrics.load_classifier; it is ddpm_lite.classifier's
    assert metrics.load_classifier is classifier.load_classifier
    assert metrics.ClassifierNotFoundError is classifier.ClassifierNotFoundError


def test_nearest_neighbours_finds_copies_and_distances():
    from ddpm_lite.metrics import nearest_neighbours

    gen = torch.Generator().manual_seed(0)
    train = torch.rand(50, 1, 8, 8, generator=gen) * 2 - 1
    copies = train[[3, 17, 42]] + 0.01
    nn = nearest_neighbours(copies, train, batch_size=2)
    assert nn.indices.tolist() == [3, 17, 42]
    assert torch.allclose(nn.distances, torch.full((3,), 0.01 * 8, dtype=torch.float64), atol=1e-6)
    fresh = torch.rand(20, 1, 8, 8, generator=gen) * 2 - 1
    brute = torch.stack([(train.flatten(1) - f.flatten()).norm(dim=1).min() for f in fresh]).double()
    assert torch.allclose(nearest_neighbours(fresh, train).distances, brute, atol=1e-5)
    with pytest.raises(ValueError, match="same image size"):
        nearest_neighbours(fresh, torch.zeros(3, 1, 4, 4))


# -- sliced Wasserstein between point clouds (ddpm_lite.oracle) ------------------------------------------------


def test_sliced_wasserstein_is_zero_for_identical_clouds_and_symmetric():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 2, generator=g), torch.randn(200, 2, generator=g) + 0.3
    assert metrics.sliced_wasserstein(a, a) == 0.0
    # the same empirical distribution written twice over is the same distribution
    assert metrics.sliced_wasserstein(a, torch.cat([a, a.flip(0)])) == pytest.approx(0.0, abs=1e-12)
    assert metrics.sliced_wasserstein(a, b) == pytest.approx(metrics.sliced_wasserstein(b, a), rel=1e-12)
    assert metrics.sliced_wasserstein(a, b) > 0.1


def test_sliced_wasserstein_of_a_shift_is_its_length_over_sqrt2_in_2d():
    # W_2 along direction θ between a cloud and its shift by s is |θ·s|; the mean of cos² over evenly spaced
    # angles is exactly 1/2, so SW_2 = |s|/√2; SW_1 = mean |cos| · |s| → 2|s|/π
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for s in ([0.3, 0.4], [-1.0, 0.0], [0.05, -0.02]):
        s = torch.tensor(s, dtype=torch.float64)
        assert metrics.sliced_wasserstein(x, x + s) == pytest.approx(float(s.norm()) / 2 ** 0.5, rel=1e-9)
        assert metrics.sliced_wasserstein(x, x + s, p=1, n_projections=4096) == pytest.approx(
            2 * float(s.norm()) / np.pi, rel=1e-4)
    dists = [metrics.sliced_wasserstein(x, x + torch.tensor([d, 0.0], dtype=torch.float64)) for d in (0.1, 0.2, 0.4)]
    assert dists[0] < dists[1] < dists[2]
    # in 3D (random directions) the same average is 1/3: approximately, with 2000 directions
    x3 = torch.randn(400, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    s3 = torch.tensor([0.2, -0.4, 0.4], dtype=torch.float64)
    assert metrics.sliced_wasserstein(x3, x3 + s3, n_projections=2000) == pytest.approx(0.6 / 3 ** 0.5, rel=0.05)


def test_one_dimensional_wasserstein_matches_scipy_for_unequal_sizes():
    from scipy.stats import wasserstein_distance

    g = torch.Generator().manual_seed(3)
    a = torch.randn(37, 1, generator=g, dtype=torch.float64)
    b = 2 * torch.randn(53, 1, generator=g, dtype=torch.float64) + 1
    expected = wasserstein_distance(a[:, 0].numpy(), b[:, 0].numpy())
    assert metrics.sliced_wasserstein(a, b, p=1) == pytest.approx(expected, rel=1e-10)
    # p = 2 in 1D with equal sizes: the root mean square difference of the sorted values
    c = torch.randn(37, 1, generator=g, dtype=torch.float64)
    rms = float(((a[:, 0].sort().values - c[:, 0].sort().values) ** 2).mean().sqrt())
    assert metrics.sliced_wasserstein(a, c) == pytest.approx(rms, rel=1e-12)


def test_sliced_wasserstein_sampling_floor_shrinks_like_one_over_sqrt_n():
    def floor(n, seed):
        g = torch.Generator().manual_seed(seed)
        return metrics.sliced_wasserstein(torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g))

    small = np.mean([floor(200, s) for s in range(4)])
    large = np.mean([floor(3200, s) for s in range(4)])
    assert 2.0 < small / large < 8.0  # 1/√n predicts 4


def test_sliced_wasserstein_rejects_bad_input():
    with pytest.raises(ValueError, match="same D"):
        metrics.sliced_wasserstein(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="at least one point"):
        metrics.sliced_wasserstein(torch.zeros(0, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="finite"):
        metrics.sliced_wasserstein(torch.full((3, 2), float("nan")), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="p must be"):
        metrics.sliced_wasserstein(torch.zeros(3, 2), torch.zeros(5, 2), p=0.5)
