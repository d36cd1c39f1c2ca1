"""Starting a backbone from a local weights file and freezing it (`backbone.weights`, `backbone.freeze`)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from metarun.errors import MetarunError

log = logging.getLogger("metarun")

# Where a backbone's tensors sit inside the files people have: a bare state dict (torchvision's
# ImageNet files), {"state_dict": ...}, or a metarun checkpoint ({"algorithm": ...}); and under
# which prefix the backbone's own names appear in them.
CONTAINERS = ("state_dict", "model", "algorithm")
PREFIXES = ("", "module.", "backbone.", "net.0.", "net.", "embedding.")


def load_weights(backbone: nn.Module, path: str) -> None:
    """Copy the tensors of `path` whose names and shapes match the backbone's; the file's other
    tensors (an ImageNet classifier, say) are skipped. Fails in one line unless most match."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise MetarunError(f"backbone.weights={path}: no such file; give the path of a saved state dict (.pt / .pth)")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise MetarunError(f"backbone.weights={path} cannot be read as a state dict ({type(error).__name__})") from None
    while isinstance(state, dict) and any(key in state for key in CONTAINERS):
        state = state[next(key for key in CONTAINERS if key in state)]
    own = backbone.state_dict()
    matched = _best_match(own, {key: value for key, value in state.items() if isinstance(value, Tensor)})
    wrong_shape = [key for key, value in matched.items() if value.shape != own[key].shape]
    if wrong_shape:
        key = wrong_shape[0]
        raise MetarunError(f"backbone.weights={path}: {key} has shape {tuple(matched[key].shape)} in the file but "
                           f"{tuple(own[key].shape)} in the backbone; is it the same architecture and input size?")
    if len(matched) < len(own) / 2:
        raise MetarunError(f"backbone.weights={path} matches only {len(matched)} of the backbone's {len(own)} tensors; "
                           "is it a state dict of the same architecture?")
    backbone.load_state_dict(matched, strict=False)
    log.info("backbone weights: %d of %d tensors from %s", len(matched), len(own), file)


def _best_match(own: dict[str, Tensor], state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The file's tensors renamed to the backbone's names, under the prefix pair that matches most."""
    best: dict[str, Tensor] = {}
    for theirs in PREFIXES:
        for ours in ("", "net."):
            renamed = {ours + key.removeprefix(theirs): value for key, value in state.items() if key.startswith(theirs)}
            matched = {key: value for key, value in renamed.items() if key in own}
            if len(matched) > len(best):
                best = matched
    return best


class Frozen(nn.Module):
    """A backbone that never trains: no gradients, and batch norm always in evaluation mode so
    its statistics stay those it was trained with."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone.requires_grad_(False).eval()
        self.out_features = backbone.out_features
        if hasattr(backbone, "out_shape"):
            self.out_shape = backbone.out_shape

    def train(self, mode: bool = True) -> Frozen:
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)
