"""Test helpers shared by top-level tests (seeded torchvision models, NHWC images)."""

import jax.numpy as jnp
import torch
import torchvision


def seeded_model(name: str, seed: int = 0) -> torch.nn.Module:
    """Seeded torchvision init with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                c = mod.num_features
                mod.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                mod.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=gen))
                mod.weight.copy_(0.5 + torch.rand(c, generator=gen))
                mod.bias.copy_(0.1 * torch.randn(c, generator=gen))
    return model


def nhwc_images(x: torch.Tensor) -> jnp.ndarray:
    return jnp.asarray(x.permute(0, 2, 3, 1).numpy())
