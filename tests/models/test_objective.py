"""USAIDModel's training step computes REFERENCE section 1's joint objective, written out independently here."""
import copy

import torch

from tests.conftest import tiny_options
from tests.models.test_usaid_model import batch, build


def literal_objective(denoiser, usa_net, noisy, clean, detach_input):
    """0.5 * (1/2N) sum ||x_hat - x||^2 + 0.5 * mean over pixels of -(1 - p*)^2 log p*, p* the arg-max softmax."""
    x_hat = denoiser(noisy)
    mse = ((x_hat - clean) ** 2).sum() / (2 * noisy.shape[0])
    usa_input = x_hat.clamp(0, 1)
    if detach_input:
        usa_input = usa_input.detach()
    p = torch.softmax(usa_net(usa_input), dim=1)
    p_star = p.gather(1, p.argmax(dim=1, keepdim=True)).clamp(1e-7, 1 - 1e-7)
    usa = (-(1 - p_star) ** 2 * torch.log(p_star)).mean()
    return 0.5 * mse + 0.5 * usa, mse


def step_and_reference(image_folder, tmp_path, detach_input):
    opt = tiny_options(image_folder)
    opt['train']['usa_opt']['detach_input'] = detach_input
    opt['train']['ema_decay'] = 0
    model = build(opt, tmp_path)
    model.feed_data(batch(image_folder, size=3))
    denoiser, usa_net = copy.deepcopy(model.net_g), model.cri_usa.net  # weights before the step
    noisy, clean = model.lq.clone(), model.gt.clone()  # the batch as the step sees it (memory format included)

    total, mse = literal_objective(denoiser, usa_net, noisy, clean, detach_input)
    reference_grads = torch.autograd.grad(total, list(denoiser.parameters()))
    mse_grads = torch.autograd.grad(0.5 * literal_objective(denoiser, usa_net, noisy, clean, True)[1],
                                    list(denoiser.parameters()))
    model.optimize_parameters(1)
    return model, total, reference_grads, mse_grads


def test_loss_and_gradients_equal_the_literal_objective(image_folder, tmp_path):
    model, total, reference_grads, mse_grads = step_and_reference(image_folder, tmp_path, detach_input=False)
    assert torch.allclose(model.loss_terms['l_total'], total, rtol=1e-5)
    for param, expected, mse in zip(model.net_g.parameters(), reference_grads, mse_grads):
        # equal up to float rounding (the step feeds the USA network NCHW, the literal form channels_last), which
        # stays far below the USA term's own share of the gradient
        error = (param.grad - expected).abs().max()
        assert error <= 5e-3 * expected.abs().max()
        assert error <= 0.1 * (expected - mse).abs().max()
    assert any(not torch.allclose(g, m) for g, m in zip(reference_grads, mse_grads))


def test_detached_input_gives_exactly_the_mse_gradient(image_folder, tmp_path):
    model, total, _, mse_grads = step_and_reference(image_folder, tmp_path, detach_input=True)
    assert torch.allclose(model.loss_terms['l_total'], total, rtol=1e-5)
    for param, expected in zip(model.net_g.parameters(), mse_grads):
        assert torch.equal(param.grad, expected)
