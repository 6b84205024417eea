"""Image tokens to pixels: through the VQ decoder, or as grey levels for the digits demo."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from autoregressive.utils.cli import UserError

DIGITS_VIEW_SCALE = 4  # 8x8 digits are enlarged for viewing; nearest keeps each token one flat square


@torch.inference_mode()
def tokens_to_images(tokens: torch.Tensor, grid: int, vq, vocab_size: int,
                     out_size: Optional[int] = None) -> torch.Tensor:
    """(B, N) tokens -> (B, H, W, 3) uint8. With a VQ: decode; without: tokens are grey levels
    0..vocab_size-1 (the digits demo). A non-finite decoder output is an error, not a black image."""
    images, finite = tokens_to_pixels(tokens, grid, vq, vocab_size, out_size)
    check_finite(bool(finite))
    return images.cpu()


@torch.inference_mode()
def tokens_to_pixels(tokens: torch.Tensor, grid: int, vq, vocab_size: int,
                     out_size: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """tokens_to_images on the tokens' device without waiting for it: (B, H, W, 3) uint8 images and a
    0-dim bool, whether the decoder's output was finite (pass it to check_finite once it is on the host)."""
    if vq is None:
        pixels = tokens.float().view(-1, 1, grid, grid) / (vocab_size - 1) * 2 - 1
        pixels = pixels.expand(-1, 3, -1, -1)
    else:
        shape = (tokens.shape[0], vq.config.codebook_embed_dim, grid, grid)
        pixels = vq.decode_code(tokens, shape=shape).float()
    finite = torch.isfinite(pixels).all()
    if out_size is not None and out_size != pixels.shape[-1]:
        pixels = F.interpolate(pixels, size=(out_size, out_size), mode="bicubic")
    return torch.clamp(127.5 * pixels + 128.0, 0, 255).to(torch.uint8).permute(0, 2, 3, 1), finite


def check_finite(finite: bool) -> None:
    if not finite:
        raise UserError("the decoder produced NaN or inf; check the VQ checkpoint and --precision")


def tokens_to_display(tokens: torch.Tensor, grid: int, vq, vocab_size: int,
                      digits_zoom: int = DIGITS_VIEW_SCALE) -> torch.Tensor:
    """(B, N) tokens -> (B, H, W, 3) uint8 for looking at: digits (no VQ) enlarged digits_zoom times, each
    token one flat square."""
    images = tokens_to_images(tokens, grid, vq, vocab_size)
    if vq is None:
        images = images.repeat_interleave(digits_zoom, dim=1).repeat_interleave(digits_zoom, dim=2)
    return images


def tokens_to_view(tokens: torch.Tensor, grid: int, vq, vocab_size: int) -> torch.Tensor:
    """(B, N) tokens -> (B, 3, H, W) floats in [0, 1] for save_image; digits (no VQ) enlarged."""
    return tokens_to_display(tokens, grid, vq, vocab_size).permute(0, 3, 1, 2).float() / 255
