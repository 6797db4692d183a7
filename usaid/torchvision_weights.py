"""torchvision's pretrained weights, from its cache or downloaded, and the ImageNet statistics its networks expect.

Offline, ``torch.hub`` fails with a bare ``URLError``; here the error names the file to download and the folder to
put it in ($TORCH_HOME/hub/checkpoints), where torchvision looks before downloading.
"""
import os

import torch
import torchvision

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_torchvision_weights(weights, needed_by, instead, error_type=RuntimeError):
    """The state dict of torchvision ``weights`` (a ``WeightsEnum`` member), from the cache or downloaded.

    If neither works, raises ``error_type`` with a message that starts with ``needed_by``, says what to place where,
    and ends with ``instead`` (the caller's alternative, e.g. a local weights file).
    """
    path = os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(weights.url))
    try:
        return torch.hub.load_state_dict_from_url(weights.url, map_location='cpu', check_hash=True, weights_only=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a bad hash is a RuntimeError
        raise error_type(f"{needed_by} needs torchvision's weights {os.path.basename(path)}, which are neither in the "
                         f'cache nor downloadable here ({error}). Download {weights.url} and put it at {path} (the '
                         f'folder is $TORCH_HOME/hub/checkpoints), or {instead}.') from error


def load_imagenet_state_dict(backbone):
    """torchvision's ImageNet weights of the ResNet ``backbone``, for USANet's ``pretrained: imagenet``."""
    return load_torchvision_weights(torchvision.models.get_model_weights(backbone).IMAGENET1K_V1,
                                    f"USANet: pretrained='imagenet' ({backbone})",
                                    "set the USANet option 'pretrained' to a local weights file or to 'none'")
