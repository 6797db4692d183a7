import pytest
import torch

from usaid.archs import USAID
from usaid.losses import BatchSSELoss, USALoss
from usaid.losses.usa_loss import focal_uncertainty

SMALL_USA = {'type': 'USANet', 'backbone': 'resnet18', 'pretrained': 'none'}


def reference_usa_loss(logits, gamma=2.0, eps=1e-7):
    """REFERENCE section 1, written out: softmax, arg-max pseudo-label, p* clamped, focal term, mean over pixels."""
    p = torch.softmax(logits, dim=1)
    k_star = p.argmax(dim=1, keepdim=True)
    p_star = p.gather(1, k_star).squeeze(1).clamp(eps, 1 - eps)
    return (-(1 - p_star) ** gamma * torch.log(p_star)).sum() / p_star.numel()


def test_focal_uncertainty_equals_the_formula_on_fixed_logits():
    logits = torch.tensor([[[[2.0, -1.0]], [[0.5, 3.0]], [[-2.0, 0.0]]]])  # (N=1, K=3, h=1, w=2)
    p0 = torch.softmax(torch.tensor([2.0, 0.5, -2.0]), 0).max()
    p1 = torch.softmax(torch.tensor([-1.0, 3.0, 0.0]), 0).max()
    by_hand = (-(1 - p0) ** 2 * torch.log(p0) - (1 - p1) ** 2 * torch.log(p1)) / 2
    assert torch.allclose(focal_uncertainty(logits).mean(), by_hand)
    torch.manual_seed(0)
    random_logits = torch.randn(3, 21, 5, 7) * 4
    for gamma in (0, 1, 2, 3.5):
        assert torch.allclose(focal_uncertainty(random_logits, gamma).mean(), reference_usa_loss(random_logits, gamma))


def test_confident_segmentation_costs_less():
    confident = torch.zeros(1, 21, 4, 4)
    confident[:, 3] = 20
    assert focal_uncertainty(confident).mean() < 1e-6 < focal_uncertainty(torch.zeros(1, 21, 4, 4)).mean()


def test_loss_applies_weight_and_clamps_the_image():
    loss = USALoss(network=SMALL_USA, loss_weight=0.3)
    image = torch.rand(2, 3, 32, 32) * 1.4 - 0.2
    expected = 0.3 * reference_usa_loss(loss.net(image.clamp(0, 1)))
    assert torch.allclose(loss(image), expected)


def test_network_is_frozen_and_computes_no_weight_gradients():
    loss = USALoss(network=SMALL_USA)
    assert not any(p.requires_grad for p in loss.parameters())
    image = torch.rand(2, 3, 32, 32, requires_grad=True)
    loss(image).backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())


@pytest.mark.parametrize('detach_input', [False, True])
def test_gradient_reaches_the_denoiser_only_without_detach(detach_input):
    torch.manual_seed(0)
    denoiser = USAID(num_feat=8, num_layers=4)
    noisy, clean = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    usa = USALoss(network=SMALL_USA, detach_input=detach_input)
    pixel = BatchSSELoss()

    def grads(with_usa):
        denoiser.zero_grad()
        out = denoiser(noisy)
        total = pixel(out, clean) + (usa(out) if with_usa else 0)
        total.backward()
        return [p.grad.clone() for p in denoiser.parameters()]

    mse_only, joint = grads(False), grads(True)
    if detach_input:
        assert all(torch.equal(a, b) for a, b in zip(mse_only, joint))
    else:
        assert any(not torch.allclose(a, b) for a, b in zip(mse_only, joint))


def test_batch_sse_is_half_the_summed_error_per_image():
    pred, target = torch.rand(4, 3, 5, 6), torch.rand(4, 3, 5, 6)
    expected = sum(((pred[n] - target[n]) ** 2).sum() for n in range(4)) / (2 * 4)
    assert torch.allclose(BatchSSELoss(loss_weight=0.5)(pred, target), 0.5 * expected)
