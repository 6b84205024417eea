"""Exponential moving average of the weights, kept in float32 beside the trained model."""
import copy

import torch


def create_ema(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen float32 copy of the model, in eval mode, equal to it at creation."""
    ema = copy.deepcopy(model).float().eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float = 0.9999) -> None:
    ema_params = list(ema.parameters())
    model_params = [p.detach().float() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, model_params, 1.0 - decay)
