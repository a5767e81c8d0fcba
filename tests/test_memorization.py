"""The detection maths on hand-built cases whose answers are known."""

import numpy as np
import pytest
import torch

from memstudy.metrics.memorization import memorization, tau_from_holdout
from memstudy.detect.neighbors import nearest_neighbors, pearson_rows


def test_tau_is_the_percentile_of_train_to_holdout_similarity():
    sim_train_holdout = np.arange(1, 101) / 100  # 0.01 .. 1.00
    assert tau_from_holdout(sim_train_holdout, 95) == pytest.approx(np.percentile(sim_train_holdout, 95))
    assert tau_from_holdout(sim_train_holdout, 50) == pytest.approx(0.505)


def test_counts_and_floor_on_known_similarities():
    sim_train_holdout = np.linspace(0.0, 0.9, 20)  # tau(95) sits between the two largest
    tau = np.percentile(sim_train_holdout, 95)
    sim_train_gen = np.array([0.99, 0.95, 0.2] + [0.1] * 17)  # 2 of 20 training samples copied
    sim_gen_train = np.array([0.99, 0.97, 0.5, 0.3])  # 2 of 4 synthetic samples are copies
    sim_holdout_train = np.array([0.1, 0.2, 0.95, 0.3])  # 1 of 4 new images looks like a copy
    m = memorization(sim_train_holdout, sim_gen_train, sim_train_gen, sim_holdout_train, 95)
    assert m.tau == pytest.approx(tau)
    assert (m.n_mem, m.n_train, m.mem_rate) == (2, 20, 0.1)
    assert (m.n_copies, m.n_gen, m.copy_rate) == (2, 4, 0.5)
    assert m.fp_floor == pytest.approx(1 / 20)  # only the largest value exceeds tau
    assert m.holdout_copy_rate == pytest.approx(0.25)


def test_a_fixed_tau_overrides_calibration():
    m = memorization([0.1, 0.2], [0.5, 0.7], [0.6, 0.4], [0.3], tau=0.55)
    assert (m.tau, m.n_copies, m.n_mem) == (0.55, 1, 1)


def test_pearson_rows_makes_dot_products_correlations():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 50))
    r = (pearson_rows(torch.tensor(a)[None]) @ pearson_rows(torch.tensor(b)[None]).T).item()
    assert r == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-5)
    # Pearson r ignores brightness and contrast: 3x + 2 correlates perfectly with x.
    x = torch.tensor(a)[None]
    assert (pearson_rows(x) @ pearson_rows(3 * x + 2).T).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_nearest_neighbors_matches_brute_force(chunk):
    g = torch.Generator().manual_seed(0)
    query, ref = torch.randn(7, 5, generator=g), torch.randn(11, 5, generator=g)
    sim, idx = nearest_neighbors(query, ref, k=3, chunk=chunk)
    full = pearson_rows(query) @ pearson_rows(ref).T
    expect_sim, expect_idx = full.topk(3, dim=1)
    assert torch.equal(idx, expect_idx) and torch.allclose(sim, expect_sim)
    dist, idx2 = nearest_neighbors(query, ref, k=2, metric="l2", chunk=chunk)
    brute = torch.cdist(query, ref)
    assert torch.equal(idx2, brute.topk(2, largest=False).indices)
    assert torch.allclose(dist, brute.topk(2, largest=False).values, atol=1e-5)


def test_nearest_neighbors_can_exclude_self():
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    sim, idx = nearest_neighbors(x, x, k=1, exclude_self=True, chunk=4)
    assert (idx[:, 0] != torch.arange(6)).all()
    with pytest.raises(ValueError, match="k=6"):
        nearest_neighbors(x, x, k=6, exclude_self=True)
