"""Shared pieces of the sampling scripts: loading the models, generating, tokens to images."""
from typing import Optional, Union

import torch
import torch.nn.functional as F

from autoregressive.fast_generate import FastSampler, fusion
from autoregressive.generate import generate
from autoregressive.models.arpg import ARPG_models
from autoregressive.utils.cli import UserError
from autoregressive.weights import load_model_weights

PRECISIONS = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA when available), 'cuda' or 'cpu'."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA device is visible; pass --device cpu or auto")
    return torch.device(name)


def load_gpt(name: str, ckpt: Optional[str], device, precision: str = "none", **overrides):
    """Build ARPG_models[name](**overrides), fill it strictly from ckpt, cast, eval mode."""
    model = ARPG_models[name](**overrides)
    if ckpt:
        load_model_weights(model, ckpt)
    return model.to(device=device, dtype=PRECISIONS[precision]).eval()


def prepare_vq(vq, device, dtype=torch.float32, compile_decoder: bool = False):
    """Move and cast the VQ tokenizer for decoding; compile its decoder on CUDA if asked.

    Measured on an H100 (VQ-16, batch 64, random weights), against float32 without TF32: float32 with
    TF32 (the official scripts' setting) moves 9% of pixel values by 1-2 levels and decodes 416 img/s
    eagerly, 679-698 compiled; float16 compiled is as close (at most 2 levels) at 1,083 img/s; bfloat16 moves
    pixels by up to 24 levels. Channels-last is slower eagerly (GroupNorm copies the layout back and
    forth) and equal compiled, so the weights stay in the default layout."""
    vq = vq.to(device=device, dtype=dtype).eval()
    if compile_decoder and torch.device(device).type == "cuda":
        vq.decoder.compile()  # in place: the state dict keeps its names
    return vq


def load_vq(name: str, ckpt: str, device, dtype=torch.float32, compile_decoder: bool = False):
    """The VQ tokenizer, filled strictly from ckpt ("model" entry or bare); see prepare_vq."""
    from tokenizer.vq_model import VQ_models

    return prepare_vq(load_model_weights(VQ_models[name](), ckpt), device, dtype, compile_decoder)


def make_sampler(model, use_fast: bool = True, fuse: Union[bool, str] = False):
    """A function (labels, sampling, generator, **known tokens) -> tokens: the CUDA-graph path on CUDA,
    else the reference loop; keyword arguments (known, known_mask) go to either. fuse: compile the
    layers too (faster; logits close to, not equal to, the eager layers'), in either path; a string
    names the torch.compile backend (tests use "aot_eager")."""
    if use_fast and model.embeddings.weight.is_cuda:
        decode = FastSampler(model, fuse=fuse).generate
    else:
        def decode(*args, **kwargs):
            with fusion(model, fuse):
                return generate(model, *args, **kwargs)
    return lambda labels, sampling, generator, **kwargs: decode(labels, sampling, generator=generator, **kwargs)


def batch_generator(device, global_seed: int, first_index: int) -> torch.Generator:
    """The randomness of a batch: a function of (global seed, index of its first sample) only."""
    return torch.Generator(device).manual_seed(global_seed * 1_000_003 + first_index)


@torch.inference_mode()
def tokens_to_images(tokens: torch.Tensor, grid: int, vq, vocab_size: int,
                     out_size: Optional[int] = None) -> torch.Tensor:
    """(B, N) tokens -> (B, H, W, 3) uint8. With a VQ: decode; without: tokens are grey levels
    0..vocab_size-1 (the digits demo). A non-finite decoder output is an error, not a black image."""
    if vq is None:
        pixels = tokens.float().view(-1, 1, grid, grid) / (vocab_size - 1) * 2 - 1
        pixels = pixels.expand(-1, 3, -1, -1)
    else:
        shape = (tokens.shape[0], vq.config.codebook_embed_dim, grid, grid)
        pixels = vq.decode_code(tokens, shape=shape).float()
    if not torch.isfinite(pixels).all():
        raise UserError("the decoder produced NaN or inf; check the VQ checkpoint and --precision")
    if out_size is not None and out_size != pixels.shape[-1]:
        pixels = F.interpolate(pixels, size=(out_size, out_size), mode="bicubic")
    return torch.clamp(127.5 * pixels + 128.0, 0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()
