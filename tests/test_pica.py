"""PICA and LSD losses (paper 000 eq. 1-7) against hand computations, Algorithm 1, NMI and
purity."""

import math

import numpy as np
import pytest
import torch

from medssl.methods.pica import (
    dirichlet_size_loss,
    negative_entropy_loss,
    pui_loss,
)
from medssl.metrics.clustering import label_combinations, match_clusters, nmi, purity
from medssl.models import build_classifier

# two views' cluster probabilities of 4 images over K = 3 clusters
P_TILDE = torch.tensor(
    [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.6, 0.3, 0.1]], dtype=torch.float64
)
P_HAT = torch.tensor(
    [[0.5, 0.4, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.8, 0.1, 0.1]], dtype=torch.float64
)


def _pui_by_hand(p_hat: np.ndarray, p_tilde: np.ndarray) -> float:
    k = p_hat.shape[1]
    total = 0.0
    for j in range(k):
        row = []
        for j2 in range(k):  # eq. 1: cosine of cluster column j of ^ and column j2 of ~
            a, b = p_hat[:, j], p_tilde[:, j2]
            row.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        m_jj = math.exp(row[j]) / sum(math.exp(v) for v in row)  # eq. 2
        total += -math.log(m_jj)
    return total / k  # eq. 3


def test_pui_cross_entropy_equals_a_hand_computation():
    want = _pui_by_hand(P_HAT.numpy(), P_TILDE.numpy())
    assert pui_loss(P_HAT, P_TILDE).item() == pytest.approx(want, rel=1e-6)
    # identical one-hot views of distinct clusters: M = identity, the loss's minimum
    eye = torch.eye(3)
    assert pui_loss(eye, eye).item() == pytest.approx(-math.log(math.e / (math.e + 2)), rel=1e-6)
    assert pui_loss(eye, eye) < pui_loss(P_HAT.float(), P_TILDE.float())


def test_negative_entropy_is_log_k_minus_the_size_entropy_and_zero_when_uniform():
    z = P_TILDE.sum(0) / P_TILDE.sum()
    want = math.log(3) + float((z * z.log()).sum())  # eq. 4
    assert negative_entropy_loss(P_TILDE).item() == pytest.approx(want, rel=1e-5)
    uniform = torch.full((6, 4), 0.25)
    assert negative_entropy_loss(uniform).item() == pytest.approx(0.0, abs=1e-7)
    assert negative_entropy_loss(P_TILDE).item() > 0


def test_dirichlet_size_loss_equals_eq6_vanishes_at_alpha_1_and_prefers_balance():
    z = (P_TILDE.sum(0) / P_TILDE.sum()).numpy()
    alpha = 1.3
    want = -1 / math.log(3) * sum((alpha - 1) * math.log(v) for v in z)  # eq. 6
    assert dirichlet_size_loss(P_TILDE, alpha).item() == pytest.approx(want, rel=1e-5)
    assert dirichlet_size_loss(P_TILDE, 1.0).item() == 0.0
    balanced = torch.full((6, 3), 1 / 3)
    skewed = torch.tensor([[0.9, 0.05, 0.05]] * 6)
    for a in (1.01, 1.1, 2.0):
        assert dirichlet_size_loss(balanced, a) < dirichlet_size_loss(skewed, a)
    # unlike L_NE (bounded by log K) it is a log barrier: an emptying cluster costs without bound
    almost_empty = torch.tensor([[0.6, 0.4 - 1e-9, 1e-9]] * 6, dtype=torch.float64)
    assert negative_entropy_loss(almost_empty) <= math.log(3)
    assert dirichlet_size_loss(almost_empty, 1.1) > math.log(3)


def test_gradients_reach_the_backbone_and_bf16_autocast_gives_the_same_loss():
    torch.manual_seed(0)
    model = build_classifier("resnet18", 3, 1)
    x = torch.rand(8, 1, 32, 32)

    def total(m, batch):
        p = torch.softmax(m(batch).float(), dim=1)
        p_tilde, p_hat = p.chunk(2)
        return pui_loss(p_hat, p_tilde) + 2.0 * dirichlet_size_loss(p_tilde, 1.1)

    model.eval()  # same BatchNorm statistics in both precisions
    loss = total(model, x)
    loss.backward()
    grad = model.backbone.conv1.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = total(model, x)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(loss.item(), rel=2e-2)


def test_algorithm1_gives_each_cluster_the_mean_label_of_its_development_images():
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 1], [1, 0, 0]])
    clusters = np.array([0, 0, 2, 2, 0])
    soft, counts = match_clusters(clusters, y, k=4)
    np.testing.assert_allclose(soft[0], [1.0, 1 / 3, 0.0])
    np.testing.assert_allclose(soft[2], [0.0, 0.0, 1.0])
    # clusters without a development image get the development set's prevalence
    np.testing.assert_allclose(soft[1], y.mean(axis=0))
    np.testing.assert_allclose(soft[3], y.mean(axis=0))
    assert counts.tolist() == [3, 0, 2, 0]


def test_label_combinations_purity_and_nmi():
    y = np.array([[1, 0], [1, 0], [0, 1], [1, 1], [0, 1], [1, 0]])
    combos = label_combinations(y)
    assert len(np.unique(combos)) == 3
    assert combos[0] == combos[1] == combos[5] and combos[2] == combos[4]
    clusters = np.array([5, 5, 7, 7, 7, 5])
    # cluster 5 = three of one combination; cluster 7 holds 2 + 1: purity 5/6
    assert purity(combos, clusters) == pytest.approx(5 / 6)
    assert nmi(combos, combos) == pytest.approx(1.0)
    assert 0 < nmi(combos, clusters) < 1
