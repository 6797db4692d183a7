"""The smallest image each of BasicSR's metrics can score: one rule per metric, in one place.

BasicSR 1.4.2's metrics fail late and differently on small images: NIQE raises ``LinAlgError: SVD did not converge``
with fewer than two 96 x 96 blocks (its covariance needs two samples), SSIM returns NaN below its 11 x 11 window and
makes OpenCV assert on an empty image, PSNR returns NaN on an empty crop. The option check asks
:func:`size_problem` for every validation and test image, so that a run stops before training, not at its first
validation. A metric with no rule here (one registered later) is not checked.
"""
import math

NIQE_BLOCK = 96  # basicsr.metrics.niqe's block size
SSIM_WINDOW = 11  # the Gaussian window of basicsr.metrics.psnr_ssim


def _niqe_fits(height, width):
    return math.floor(height / NIQE_BLOCK) * math.floor(width / NIQE_BLOCK) >= 2


def _window_fits(height, width):
    return min(height, width) >= SSIM_WINDOW


def _not_empty(height, width):
    return min(height, width) >= 1


# metric type -> (whether an image of (height, width) after crop_border can be scored, what that needs)
RULES = {
    'calculate_niqe': (_niqe_fits, f'at least two {NIQE_BLOCK}x{NIQE_BLOCK} blocks, e.g. 192x96 or larger'),
    'calculate_ssim': (_window_fits, f'at least {SSIM_WINDOW}x{SSIM_WINDOW} (its Gaussian window)'),
    'calculate_ssim_pt': (_window_fits, f'at least {SSIM_WINDOW}x{SSIM_WINDOW} (its Gaussian window)'),
    'calculate_psnr': (_not_empty, 'at least 1x1'),
    'calculate_psnr_pt': (_not_empty, 'at least 1x1'),
}


def size_problem(metric_opt, height, width):
    """Why the metric configured by ``metric_opt`` (``type``, ``crop_border``) cannot score a ``height`` x ``width``
    image, or None if it can (or if there is no rule for it)."""
    metric_type = metric_opt.get('type')
    rule = RULES.get(metric_type) if isinstance(metric_type, str) else None
    if rule is None:
        return None
    fits, needs = rule
    crop = metric_opt.get('crop_border', 0) or 0
    cropped = (max(height - 2 * crop, 0), max(width - 2 * crop, 0))
    if fits(*cropped):
        return None
    after = f', {cropped[0]}x{cropped[1]} after crop_border {crop}' if crop else ''
    return f'{metric_opt["type"]} needs {needs}; found {height}x{width}{after}'
