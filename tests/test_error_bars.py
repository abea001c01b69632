"""Error bars: the jackknife, each metric's replicates against an independent recomputation, the group
moments of the data walk, and the keys an evaluation logs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.tiny import TinyFeatures, TinyGAN, real_images, sample
from torch.utils.data import TensorDataset

from lightning_fid.engine import Evaluator
from lightning_fid.engine._accumulators import FeatureMoments, GroupMoments
from lightning_fid.engine._scoring import Scorer
from lightning_fid.engine._stats import Statistics
from lightning_fid.metrics import FID, Estimate, InceptionScore, Metric, Needs, frechet_distance, frechet_estimate
from lightning_fid.metrics._jackknife import check_groups, group_sizes, jackknife_se, mean_estimate, per_group_sums
from lightning_fid.metrics.base import Context, RunInfo
from lightning_fid.metrics.inception_score import split_scores


def _groups_np(x: np.ndarray, groups: int) -> list[np.ndarray]:
    return [x[np.arange(len(x)) % groups == g] for g in range(groups)]


def test_jackknife_of_a_mean_is_the_standard_error_of_the_group_means(rng):
    x = rng.standard_normal(1000) * 3 + 1
    est = mean_estimate(per_group_sums(torch.from_numpy(x), 10), group_sizes(1000, 10))
    means = np.array([g.mean() for g in _groups_np(x, 10)])
    assert est.value == pytest.approx(x.mean(), rel=1e-13)
    assert est.se == pytest.approx(means.std(ddof=1) / math.sqrt(10), rel=1e-10)
    assert est.se == pytest.approx(x.std() / math.sqrt(1000), rel=0.5)  # and about the textbook SE


def test_unequal_groups_use_the_delete_m_jackknife(rng):
    # Busing, Meijer & van der Leeden (1999): for a mean the pseudo-values are the group means
    x = rng.standard_normal(1003)
    parts = _groups_np(x, 10)
    m = np.array([len(p) for p in parts], dtype=float)
    n, h = m.sum(), m.sum() / m
    loo = np.array([(x.sum() - p.sum()) / (n - len(p)) for p in parts])
    theta_j = 10 * x.mean() - ((1 - m / n) * loo).sum()
    expected = math.sqrt((((np.array([p.mean() for p in parts]) - theta_j) ** 2) / (h - 1)).sum() / 10)
    assert jackknife_se(x.mean(), torch.from_numpy(loo), torch.from_numpy(m)) == pytest.approx(expected, rel=1e-10)
    assert group_sizes(1003, 10).tolist() == m.tolist()


def test_estimates_pair_replicates_and_survive_a_checkpoint():
    a = Estimate(2.0, torch.tensor([2.1, 1.9, 2.05, 1.95]), torch.full((4,), 5.0))
    b = Estimate(1.5, torch.tensor([1.62, 1.41, 1.55, 1.42]), torch.full((4,), 5.0))
    d = a.minus(b)
    assert d.value == 0.5 and torch.allclose(d.replicates, a.replicates - b.replicates)
    assert d.se < a.se  # the replicates move together: the difference is sharper than either value
    assert Estimate.from_state(a.state()).state() == a.state()
    other = Estimate(1.0, torch.ones(3), torch.ones(3))
    assert math.isnan(a.minus(other).se)  # other sample indices: no paired error
    assert math.isnan(Estimate(1.0, torch.tensor([1.0]), torch.tensor([3.0])).se)  # one group: nothing to compare


@pytest.mark.parametrize("value, groups", [(True, 10), (False, 0), (None, 0), (0, 0), (20, 20)])
def test_error_bars_option(value, groups):
    assert check_groups(value) == groups


@pytest.mark.parametrize("bad", [1, -3, 2.5, "yes"])
def test_error_bars_option_refuses_nonsense(bad):
    with pytest.raises(ValueError, match="error_bars must be True"):
        check_groups(bad)


def _grouped(x: torch.Tensor, groups: int = 10, batch: int = 97) -> Statistics:
    """Statistics with group moments, accumulated in uneven batches as the data walk does."""
    total, grouped = FeatureMoments(x.shape[1]), GroupMoments(x.shape[1], groups)
    for s in range(0, x.shape[0], batch):
        total.update(x[s : s + batch])
        grouped.update(x[s : s + batch], torch.arange(s, min(s + batch, x.shape[0])))
    stats = total.statistics()
    stats.group_moments = tuple(grouped.tensors())
    return stats


def _exact_replicates(mu1, s1, x: torch.Tensor, groups: int = 10) -> torch.Tensor:
    g = torch.arange(x.shape[0]) % groups
    fids = [frechet_distance(mu1, s1, x[g != k].mean(0), torch.cov(x[g != k].T)) for k in range(groups)]
    return torch.tensor(fids, dtype=torch.float64)


def test_group_moments_add_up_to_the_total(rng):
    x = torch.from_numpy(rng.standard_normal((503, 5)))
    stats = _grouped(x)
    n, s, o = stats.group_moments
    assert n.tolist() == group_sizes(503, 10).tolist()
    for g in range(10):
        rows = x[torch.arange(503) % 10 == g]
        assert torch.allclose(s[g], rows.sum(0)) and torch.allclose(o[g], rows.T @ rows)
    assert torch.allclose(o.sum(0) / 503, x.T @ x / 503, rtol=1e-12)


def test_fid_replicates_are_the_first_order_delete_a_group_fids(rng):
    d = 6
    real = torch.from_numpy(rng.standard_normal((5000, d)))
    x = torch.from_numpy(rng.standard_normal((4000, d)) * 1.2 + 0.3)
    mu1, s1 = real.mean(0), torch.cov(real.T)
    stats = _grouped(x)
    est = frechet_estimate(mu1, s1, stats.mu, stats.sigma, stats.group_moments)
    exact = _exact_replicates(mu1, s1, x)
    assert est.value == pytest.approx(frechet_distance(mu1, s1, x.mean(0), torch.cov(x.T)), rel=1e-12)
    # Deleting a group also raises the bias term (about tr / n) by the same amount for every group: a
    # second-order shift the linearisation leaves out, and which the standard error does not see.
    spread, linear = exact - exact.mean(), est.replicates - est.replicates.mean()
    assert spread.abs().max() > 1e-3  # deleting a group does move the value
    assert (linear - spread).abs().max() < 0.05 * spread.abs().max()
    assert est.se == pytest.approx(jackknife_se(est.value, exact, est.sizes), rel=0.05)


def test_fid_error_bars_with_fewer_samples_than_dimensions(rng):
    real = torch.from_numpy(rng.standard_normal((400, 40)))
    x = torch.from_numpy(rng.standard_normal((30, 40)) + 0.5)
    stats = _grouped(x, batch=7)
    with pytest.warns(UserWarning, match="singular"):
        values = FID().compute(Statistics(real.mean(0), torch.cov(real.T), 400), stats, Context(groups=10, state={}))
    est = values["fid"]
    assert isinstance(est, Estimate) and math.isfinite(est.se) and est.se > 0
    assert est.se < est.value


def test_inception_score_error_is_that_of_a_mean_over_its_splits(rng):
    logits = torch.from_numpy(rng.standard_normal((400, 12)) * 3)
    out = InceptionScore(splits=8).compute(Statistics(), Statistics(features=logits), Context(groups=10))
    scores = np.array(split_scores(logits, 8))
    assert out["is"].value == pytest.approx(scores.mean(), rel=1e-14)
    assert out["is"].se == pytest.approx(scores.std(ddof=1) / math.sqrt(8), rel=1e-10)
    assert out["is"].se == pytest.approx(out["is_std"] / math.sqrt(7), rel=1e-10)
    assert InceptionScore(splits=1).error_keys() == ()


class Plain(Metric):
    """A user metric with no error bars of its own."""

    name = "plain"
    needs = Needs(moments=True)

    def compute(self, real, fake, context):
        return {self.key: float(fake.mu.sum())}


def test_scorer_declares_se_keys_only_for_metrics_with_error_bars(rng):
    metrics = [FID(), Plain(), InceptionScore(splits=2)]
    on = Scorer(metrics, ["f", "f", "l"], RunInfo(num_samples=20), groups=10)
    off = Scorer(metrics, ["f", "f", "l"], RunInfo(num_samples=20))
    assert on.keys() == ["fid", "fid_se", "plain", "is", "is_std", "is_se"]
    assert off.keys() == ["fid", "plain", "is", "is_std"]
    assert on.error_keys() == {"fid": False, "is": True}
    assert on.grouped_slots() == {"f": 10}
    assert all(math.isnan(v) for v in on.nan_values().values()) and list(on.nan_values()) == on.keys()
    with pytest.raises(ValueError, match="logged twice"):
        Scorer([FID(), Plain(key="fid_se")], ["f", "f"], RunInfo(num_samples=20), groups=10)


def test_a_failing_metric_logs_nan_for_its_error_too(rng):
    x = torch.from_numpy(rng.standard_normal((50, 3)))
    fake = _grouped(x)
    scorer = Scorer([FID()], ["f"], RunInfo(num_samples=50), groups=10)
    broken = {"f": Statistics(torch.zeros(4), torch.eye(4), 50)}  # another dimension: FID raises
    with pytest.warns(UserWarning, match="could not be computed"):
        values = scorer.score(broken, {"f": fake}, strict=False)
    assert math.isnan(values["fid"]) and math.isnan(values["fid_se"]) and scorer.estimates == {}


def _evaluator(error_bars, metrics=("fid",)):
    return Evaluator(
        TensorDataset(real_images(60)),
        list(metrics),
        sample_fn=sample,
        feature_extractor=TinyFeatures(),
        num_samples=60,
        batch_size=13,
        progress=False,
        error_bars=error_bars,
    )


def test_error_bars_leave_the_values_alone_and_switch_off():
    model = TinyGAN()
    on, _ = _evaluator(True).evaluate(model)
    off, _ = _evaluator(False).evaluate(model)
    assert set(on) == {"fid", "fid_se"} and set(off) == {"fid"}
    assert on["fid"] == pytest.approx(off["fid"], rel=1e-12)  # eigh instead of eigvalsh: rounding only
    assert 0 < on["fid_se"] < on["fid"]


def _kid_reference(real, fake, subsets, size, seed, groups):
    """Per subset, the unbiased MMD^2 without each group's generated samples, from float64 kernels."""
    from lightning_fid.metrics.kid import subset_indices

    x, y = real.double(), fake.double()
    kern = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3  # noqa: E731

    def mmd(ix, iy):
        kxx, kyy, kxy = kern(x[ix], x[ix]), kern(y[iy], y[iy]), kern(x[ix], y[iy])
        m, n = len(ix), len(iy)
        off = lambda k: float(k.sum() - k.trace())  # noqa: E731
        return off(kxx) / (m * (m - 1)) + off(kyy) / (n * (n - 1)) - 2 * float(kxy.mean())

    reps = np.zeros((subsets, groups))
    for s, (ix, iy) in enumerate(subset_indices(len(x), len(y), subsets, size, seed)):
        reps[s] = [mmd(ix, iy[iy % groups != g]) for g in range(groups)]
    return reps.mean(0)


@pytest.mark.parametrize("subsets, size", [(6, 50), (12, 200)])  # one subset at a time; one walk over blocks
def test_kid_replicates_leave_each_group_out_of_every_subset(rng, subsets, size):
    from lightning_fid.metrics.kid import kid, kid_estimate

    real = torch.from_numpy(rng.standard_normal((300, 16)).astype(np.float32))
    fake = torch.from_numpy((rng.standard_normal((250, 16)) * 1.2 + 0.2).astype(np.float32))
    est, std = kid_estimate(real, fake, subsets, size, 3, groups=10)
    assert (est.value, std) == pytest.approx(kid(real, fake, subsets, size, 3), rel=1e-12)
    np.testing.assert_allclose(est.replicates.numpy(), _kid_reference(real, fake, subsets, size, 3, 10), atol=1e-7)


def test_kid_group_sums_of_the_block_walk_count_each_mirror_once(rng):
    from lightning_fid.metrics import _kid_terms
    from lightning_fid.metrics.kid import subset_indices

    x = torch.from_numpy(rng.standard_normal((150, 8)).astype(np.float32))
    index = [iy for _, iy in subset_indices(150, 150, 5, 60, 1)]
    by_walk = _kid_terms._block_sums(x, x, index, None, (32, False, None, 10))  # 5 x 5 blocks, mirrored
    by_subset = _kid_terms.subset_sums(x, x, index, None, block_size=32, groups=10)  # subsets: cheaper here
    for a, b in zip(by_walk, by_subset):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # real x generated: the walk sums each subset's real rows first, and its column groups from that
    y = torch.from_numpy(rng.standard_normal((130, 8)).astype(np.float32) + 0.3)
    pairs = subset_indices(150, 130, 5, 60, 2)
    ix, iy = [a for a, _ in pairs], [b for _, b in pairs]
    by_walk = _kid_terms._block_sums(x, y, ix, iy, (32, False, None, 10))
    by_subset = _kid_terms.subset_sums(x, y, ix, iy, block_size=32, groups=10)
    for a, b in zip(by_walk, by_subset):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("block_size", [2048, 64])
def test_cmmd_replicates_are_the_cmmd_without_each_group(rng, block_size):
    from lightning_fid.metrics.cmmd import cmmd, cmmd_estimate

    unit = lambda a: torch.nn.functional.normalize(torch.from_numpy(a.astype(np.float32)), dim=1)  # noqa: E731
    x, y = unit(rng.standard_normal((300, 16))), unit(rng.standard_normal((257, 16)) + 0.3)
    est = cmmd_estimate(x, y, groups=10, block_size=block_size)
    assert est.value == cmmd(x, y, block_size=block_size)  # the same walk and sums: bit for bit
    a, b = x.double().numpy(), y.double().numpy()
    k = lambda p, q: np.exp(-((p[:, None] - q[None]) ** 2).sum(-1) / 200.0)  # noqa: E731
    g = np.arange(len(b)) % 10
    exact = [1000 * (k(a, a).mean() + k(b[g != j], b[g != j]).mean() - 2 * k(a, b[g != j]).mean()) for j in range(10)]
    np.testing.assert_allclose(est.replicates.numpy(), exact, atol=1e-7)
    assert np.ptp(exact) > 1e-3


def _brute_recall_replicates(real: torch.Tensor, fake: torch.Tensor, k: int, groups: int) -> list[float]:
    from lightning_fid.metrics._knn_errors import widening_shrink

    x, y = real.double().numpy(), fake.double().numpy()
    dyy = np.sqrt(((y[:, None] - y[None]) ** 2).sum(-1))
    np.fill_diagonal(dyy, np.inf)
    dxy = np.sqrt(((x[:, None] - y[None]) ** 2).sum(-1))
    full = np.sort(dyy, axis=1)[:, k - 1]
    g, c, out = np.arange(len(y)) % groups, widening_shrink(k, groups), []
    for j in range(groups):
        keep = g != j
        without = np.sort(dyy[np.ix_(keep, keep)], axis=1)[:, k - 1]
        radius = full[keep] + c * (without - full[keep])
        out.append(float((dxy[:, keep] <= radius[None]).any(1).mean()))
    return out


def test_order_statistic_inflation_matches_a_simulation_of_its_model():
    """The jackknife's over-count of a k-th order statistic's variance, against a direct simulation of
    the local Poisson model (exponential spacings, uniformly random groups)."""
    from lightning_fid.metrics._knn_errors import order_statistic_inflation, widening_shrink

    rng = np.random.default_rng(0)
    for k, groups in ((1, 10), (3, 10), (5, 4)):
        v = np.cumsum(rng.exponential(size=(40_000, k + 40)), axis=1)
        label = rng.integers(0, groups, size=v.shape)
        reps = np.stack([np.sort(np.where(label != g, v, np.inf), axis=1)[:, k - 1] for g in range(groups)], 1)
        vj = (groups - 1) / groups * ((reps - reps.mean(1, keepdims=True)) ** 2).sum(1)
        assert order_statistic_inflation(k, groups) == pytest.approx(vj.mean() / k, rel=0.03)
    assert order_statistic_inflation(3, 10) == pytest.approx(1.8544, abs=1e-4)
    assert widening_shrink(3, 10) == pytest.approx(0.7343, abs=1e-4)


@pytest.mark.parametrize("block_size", [2048, 50])
def test_knn_replicates_leave_each_group_out(rng, block_size):
    from lightning_fid.metrics import density_coverage, knn_radii, precision_recall
    from lightning_fid.metrics._knn_errors import density_coverage_estimate, precision_recall_estimate

    real = torch.from_numpy(rng.standard_normal((400, 8)).astype(np.float32))
    fake = torch.from_numpy((rng.standard_normal((333, 8)) * 1.1 + 0.3).astype(np.float32))
    p, r = precision_recall_estimate(real, fake, 3, groups=10, block_size=block_size)
    d, c = density_coverage_estimate(real, fake, 5, groups=10, block_size=block_size)
    assert (p.value, r.value) == precision_recall(real, fake, 3)
    assert (d.value, c.value) == density_coverage(real, fake, 5)
    g = torch.arange(333) % 10
    rr3, rr5 = knn_radii(real, 3), knn_radii(real, 5)
    out = [
        (
            precision_recall(real, fake[g != j], 3, real_radii=rr3)[0],
            *density_coverage(real, fake[g != j], 5, real_radii=rr5),
        )
        for j in range(10)
    ]
    for est, exact in zip((p, d, c), zip(*out)):
        np.testing.assert_allclose(est.replicates.numpy(), exact, rtol=1e-12)
    # recall: the recall of the other groups, each ball widened towards its radius without the group
    # (shrunk by widening_shrink), brute force in float64
    np.testing.assert_allclose(r.replicates.numpy(), _brute_recall_replicates(real, fake, 3, 10), rtol=1e-12)
    assert all(e.se > 0 for e in (p, r, d, c))


@pytest.mark.parametrize("groups, k", [(2, 5), (3, 3), (10, 3)])
def test_recall_replicates_when_the_left_out_group_holds_most_neighbours(rng, groups, k):
    """Few groups (half the neighbours in the left-out one) and a group holding 12 copies of one sample:
    the neighbour lists run out and those rows are measured against every sample; still the brute
    force delete-a-group recall."""
    from lightning_fid.metrics._knn_errors import precision_recall_estimate

    real = torch.from_numpy(rng.standard_normal((150, 6)).astype(np.float32))
    fake = rng.standard_normal((120, 6)).astype(np.float32) * 1.2 + 0.2
    fake[::groups][:12] = fake[0]  # copies in group 0: their k nearest are all in it
    fake = torch.from_numpy(fake)
    _, r = precision_recall_estimate(real, fake, k, groups=groups, block_size=32)
    np.testing.assert_allclose(r.replicates.numpy(), _brute_recall_replicates(real, fake, k, groups), rtol=1e-12)


def test_recall_replicates_without_enough_samples_for_a_radius_are_undefined(rng):
    from lightning_fid.metrics._knn_errors import precision_recall_estimate

    real = torch.from_numpy(rng.standard_normal((30, 4)).astype(np.float32))
    fake = torch.from_numpy(rng.standard_normal((5, 4)).astype(np.float32))
    _, r = precision_recall_estimate(real, fake, 4, groups=5)  # leaving one out leaves 4 = k samples
    assert math.isnan(r.se) and math.isfinite(r.value)
    _, r = precision_recall_estimate(real, fake, 3, groups=5)  # 4 > k = 3: defined
    assert math.isfinite(r.se)


@pytest.mark.parametrize("dim", [6, 64])
def test_a_collapsed_generator_has_a_finite_fid_and_a_zero_standard_error(rng, dim):
    """Every generated sample identical: the covariance is rounding alone (possibly with tiny negative
    eigenvalues), FID is |mu1 - y|^2 + tr S1, and the SE over redraws is 0."""
    from lightning_fid.engine._accumulators import FeatureMoments, GroupMoments
    from lightning_fid.metrics import frechet_distance
    from lightning_fid.metrics.fid import frechet_estimate

    real = torch.from_numpy(rng.standard_normal((3000, dim)))
    mu1, s1 = real.mean(0), torch.cov(real.T)
    row = torch.from_numpy(rng.standard_normal(dim) * 3 + 5)  # a large mean: the most cancellation
    x = row[None].repeat(300, 1)
    total, grouped = FeatureMoments(dim), GroupMoments(dim, 10)
    total.update(x)
    grouped.update(x, torch.arange(300))
    stats = total.statistics()
    expected = float(((mu1 - row) ** 2).sum() + torch.trace(s1))
    assert frechet_distance(mu1, s1, stats.mu, stats.sigma) == pytest.approx(expected, rel=1e-6)
    est = frechet_estimate(mu1, s1, stats.mu, stats.sigma, tuple(grouped.tensors()))
    assert est.value == pytest.approx(expected, rel=1e-6) and est.se == pytest.approx(0.0, abs=1e-6 * expected)
    with pytest.raises(ValueError, match="not positive semi-definite"):  # a real negative direction still is refused
        frechet_distance(mu1, s1, stats.mu, stats.sigma - 0.01 * torch.eye(dim, dtype=torch.float64))


def test_error_bars_that_cannot_work_are_refused_when_the_callback_is_made(tmp_path, monkeypatch):
    from helpers.tiny import make_callback

    from lightning_fid.engine import _memory, build_slots
    from lightning_fid.metrics import FID

    with pytest.raises(ValueError, match=r"100 jackknife groups but an evaluation draws only 23 samples"):
        make_callback(tmp_path, metrics=("fid",), error_bars=100)
    assert make_callback(tmp_path, metrics=("fid",), error_bars=np.int64(23)).evaluator.scorer.groups == 23
    slots, _ = build_slots([FID()], TinyFeatures())  # 8-d: each group keeps 73 float64 values, merged once
    monkeypatch.setattr(_memory, "available_bytes", lambda device: 10_000)
    _memory.check_group_memory(slots, {slots[0].info.name: 5}, 23, torch.device("cpu"))  # 5.8 kB: fits
    with pytest.raises(ValueError, match=r"lower error_bars \(True: 10 groups\) or set error_bars=False"):
        _memory.check_group_memory(slots, {slots[0].info.name: 10}, 23, torch.device("cpu"))


def test_an_estimate_is_one_replicate_per_group_and_counts_for_sizes():
    from lightning_fid.metrics import Estimate

    with pytest.raises(ValueError, match=r"1-D tensors of one length.*\(10, 2\)"):
        Estimate(1.0, torch.zeros(10, 2), torch.ones(20))
    with pytest.raises(ValueError, match="1-D tensors of one length"):
        Estimate(1.0, torch.zeros(5), torch.ones(10))
    for sizes in (torch.tensor([3.0, -1.0]), torch.tensor([3.0, 0.5]), torch.tensor([3.0, math.nan])):
        with pytest.raises(ValueError, match="group sizes must be counts"):
            Estimate(1.0, torch.zeros(2), sizes)
    assert Estimate(1.0, torch.zeros(2), torch.tensor([3.0, 0.0])).sizes.tolist() == [3.0, 0.0]  # an empty group
