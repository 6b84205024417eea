"""LlamaGen's VQ tokenizer (VQ-16: 16x downsampling, codebook 16384 x 8), for encoding and decoding.

Inference only: the training losses are not here. Module names match LlamaGen's vq_ds16_c2i.pt, so
its "model" entry loads with strict=True. Kept on purpose for that file:
- `quantize.codebook_used`, a 65536-entry usage buffer that only LlamaGen's training reads;
- downsampling pads right and bottom by one pixel before a stride-2 3x3 convolution (asymmetric);
- the codebook and the encoder outputs are l2-normalised before the nearest-neighbour search.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class VQConfig:
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    encoder_ch_mult: Tuple[int, ...] = (1, 1, 2, 2, 4)
    decoder_ch_mult: Tuple[int, ...] = (1, 1, 2, 2, 4)
    z_channels: int = 256
    base_channels: int = 128
    num_res_blocks: int = 2
    norm_groups: int = 32
    usage_buffer_size: int = 65536  # LlamaGen's codebook_used buffer

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.encoder_ch_mult) - 1)


def group_norm(channels: int, config: VQConfig) -> nn.GroupNorm:
    return nn.GroupNorm(config.norm_groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, config: VQConfig):
        super().__init__()
        self.norm1 = group_norm(in_ch, config)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(out_ch, config)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if in_ch != out_ch:
            self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels of a feature map."""

    def __init__(self, channels: int, config: VQConfig):
        super().__init__()
        self.norm = group_norm(channels, config)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        normed = self.norm(x)
        q, k, v = (conv(normed).flatten(2).transpose(1, 2) for conv in (self.q, self.k, self.v))  # (B, hw, C)
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def middle(channels: int, config: VQConfig) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(channels, channels, config), AttnBlock(channels, config),
                          ResnetBlock(channels, channels, config)])


def run_level(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The residual blocks of one resolution, each followed by its attention block if the level has them."""
    for i, res in enumerate(block.res):
        h = res(h)
        if len(block.attn):
            h = block.attn[i](h)
    return h


class Encoder(nn.Module):
    def __init__(self, config: VQConfig):
        super().__init__()
        mult, ch = config.encoder_ch_mult, config.base_channels
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        in_ch = ch
        for level, factor in enumerate(mult):
            block, out_ch, last = nn.Module(), ch * factor, level == len(mult) - 1
            block.res = nn.ModuleList([ResnetBlock(in_ch if i == 0 else out_ch, out_ch, config)
                                       for i in range(config.num_res_blocks)])
            block.attn = nn.ModuleList([AttnBlock(out_ch, config) for _ in range(config.num_res_blocks)] if last else [])
            if not last:
                block.downsample = Downsample(out_ch)
            self.conv_blocks.append(block)
            in_ch = out_ch
        self.mid = middle(in_ch, config)
        self.norm_out = group_norm(in_ch, config)
        self.conv_out = nn.Conv2d(in_ch, config.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for block in self.conv_blocks:
            h = run_level(block, h)
            if hasattr(block, "downsample"):
                h = block.downsample(h)
        for layer in self.mid:
            h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, config: VQConfig):
        super().__init__()
        mult, ch = config.decoder_ch_mult, config.base_channels
        in_ch = ch * mult[-1]
        self.conv_in = nn.Conv2d(config.z_channels, in_ch, 3, padding=1)
        self.mid = middle(in_ch, config)
        self.conv_blocks = nn.ModuleList()
        for level in reversed(range(len(mult))):
            block, out_ch, first = nn.Module(), ch * mult[level], level == len(mult) - 1
            block.res = nn.ModuleList([ResnetBlock(in_ch if i == 0 else out_ch, out_ch, config)
                                       for i in range(config.num_res_blocks + 1)])
            block.attn = nn.ModuleList([AttnBlock(out_ch, config) for _ in range(config.num_res_blocks + 1)] if first else [])
            if level != 0:
                block.upsample = Upsample(out_ch)
            self.conv_blocks.append(block)
            in_ch = out_ch
        self.norm_out = group_norm(in_ch, config)
        self.conv_out = nn.Conv2d(in_ch, 3, 3, padding=1)

    def forward(self, z):
        h = self.conv_in(z)
        for layer in self.mid:
            h = layer(h)
        for block in self.conv_blocks:
            h = run_level(block, h)
            if hasattr(block, "upsample"):
                h = block.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    def __init__(self, config: VQConfig):
        super().__init__()
        self.l2_norm = config.codebook_l2_norm
        self.embedding = nn.Embedding(config.codebook_size, config.codebook_embed_dim)
        self.register_buffer("codebook_used", torch.zeros(config.usage_buffer_size))

    def codebook(self) -> torch.Tensor:
        weight = self.embedding.weight
        return F.normalize(weight, p=2, dim=-1) if self.l2_norm else weight

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """z (M, C) -> (M,) index of the nearest codebook row (l2 distance after normalisation)."""
        if self.l2_norm:
            z = F.normalize(z, p=2, dim=-1)
        codebook = self.codebook()
        distances = z.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * z @ codebook.t()
        return distances.argmin(dim=1)


class VQModel(nn.Module):
    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = VectorQuantizer(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.codebook_embed_dim, config.z_channels, 1)

    @torch.no_grad()
    def encode_to_indices(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] -> (B, (H/16)*(W/16)) long codes in raster order."""
        weight = self.quant_conv.weight
        z = self.quant_conv(self.encoder(images.to(weight.dtype)))  # (B, C, h, w)
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()
        return self.quantize.nearest(flat).view(z.shape[0], -1)

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        """quant (B, C, h, w) codebook vectors -> (B, 3, 16h, 16w) images, nominally in [-1, 1]."""
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, indices: torch.Tensor, shape: Optional[Tuple[int, int, int, int]] = None) -> torch.Tensor:
        """indices (B, N) long in raster order; shape (B, C, h, w) with N = h*w (default: a square grid)."""
        batch, num = indices.shape
        if shape is None:
            side = int(round(num ** 0.5))
            shape = (batch, self.config.codebook_embed_dim, side, side)
        if shape[2] * shape[3] != num:
            raise ValueError(f"decode shape {tuple(shape)} does not hold {num} codes per image")
        weight = self.post_quant_conv.weight
        vectors = self.quantize.codebook()[indices].to(weight.dtype)  # (B, N, C)
        quant = vectors.view(batch, shape[2], shape[3], shape[1]).permute(0, 3, 1, 2)  # channels-last strides
        if not self.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last):
            quant = quant.contiguous()  # a decoder in the default layout decodes channels-last input slower eagerly
        return self.decode(quant)


def VQ_16(**overrides) -> VQModel:
    return VQModel(VQConfig(**overrides))


def VQ_8(**overrides) -> VQModel:
    return VQModel(VQConfig(**{"encoder_ch_mult": (1, 2, 2, 4), "decoder_ch_mult": (1, 2, 2, 4), **overrides}))


VQ_models = {"VQ-16": VQ_16, "VQ-8": VQ_8}
