import pytest
import torch

from nlp_dlg.engine import ConfigError, gradient_distance

A = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
B = [torch.tensor([0.0, 4.0]), torch.tensor([[1.0]])]


def test_l2_is_the_sum_of_squared_differences():
    # (1-0)^2 + (2-4)^2 + (3-1)^2 = 9
    assert gradient_distance(A, B, "l2").item() == pytest.approx(9.0)


def test_cosine_hand_computed_and_scale_free():
    # <a,b> = 0 + 8 + 3 = 11, |a| = sqrt(14), |b| = sqrt(17)
    expected = 1 - 11 / (14 ** 0.5 * 17 ** 0.5)
    assert gradient_distance(A, B, "cosine").item() == pytest.approx(expected, rel=1e-6)
    assert gradient_distance([3 * t for t in A], B, "cosine").item() == pytest.approx(expected, rel=1e-6)
    assert gradient_distance(A, A, "cosine").item() == pytest.approx(0.0, abs=1e-7)
    assert gradient_distance(A, [-t for t in A], "cosine").item() == pytest.approx(2.0)


def test_l2_plus_l1_hand_computed():
    # l2 = 9, l1 = 1 + 2 + 2 = 5
    assert gradient_distance(A, B, "l2+l1", l1_weight=0.5).item() == pytest.approx(9 + 2.5)


def test_layer_l2_weighs_every_tensor_the_same():
    target = [torch.full((3,), 100.0), torch.full((2,), 1e-6)]
    dummy = [torch.full((3,), 101.0), torch.full((2,), 2e-6)]
    # relative errors: (3 * 1) / (3 * 1e4) + (2 * 1e-12) / (2 * 1e-12) = 1e-4 + 1
    assert gradient_distance(dummy, target, "layer-l2").item() == pytest.approx(1 + 1e-4, rel=1e-5)
    assert gradient_distance(target, target, "layer-l2").item() == 0.0


def test_distance_is_differentiable():
    a = [t.clone().requires_grad_() for t in A]
    gradient_distance(a, B, "l2").backward()
    assert torch.allclose(a[0].grad, 2 * (A[0] - B[0]))


def test_bad_arguments():
    with pytest.raises(ConfigError, match="expected one of l2, cosine, l2\\+l1, layer-l2, got 'l3'"):
        gradient_distance(A, B, "l3")
    with pytest.raises(ConfigError, match="as many"):
        gradient_distance(A, B[:1], "l2")
