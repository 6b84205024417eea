"""The page's model: the network, its tokenizer, the pictures it makes and reads, and its samplers (one
per decoding layout, kept across clicks: on CUDA a sampler keeps its captured graphs)."""
import glob
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from autoregressive.fast_generate import make_sampler
from autoregressive.render import tokens_to_display
from autoregressive.sampling import SamplingConfig
from autoregressive.utils.cli import UserError
from demo.classes import ClassNames

DIGITS_ZOOM = 32  # an 8x8 digit is shown at 256 px, so the brush can cover single tokens
PAINTED_FRACTION = 0.25  # a token is regenerated when at least this share of its area is painted
SAMPLERS_KEPT = 4  # decoding layouts whose samplers (and CUDA graphs and caches) stay in memory


def find_checkpoint(results_dir: str = "results") -> Optional[str]:
    """The newest checkpoint of a digits run under results_dir (what scripts/demo.sh writes), or None."""
    paths = glob.glob(os.path.join(results_dir, "**", "*-ARPG-digits", "checkpoints", "*.pt"), recursive=True)
    return max(paths, key=os.path.getmtime) if paths else None


@dataclass
class DemoModel:
    """A loaded model with what is needed to turn tokens into pictures and back."""
    model: torch.nn.Module
    vq: Optional[torch.nn.Module]  # None: the digits model, whose tokens are grey levels
    device: torch.device
    image_size: int  # pixels per side of the pictures the editor works on
    classes: ClassNames = None
    # (compiled, rows, settings that shape a step, editing) -> sampler; least recently used first
    samplers: "OrderedDict[Tuple, Callable]" = field(default_factory=OrderedDict)

    def __post_init__(self):
        if self.classes is None:
            self.classes = ClassNames.for_model(self.num_classes, imagenet=self.vq is not None)

    @property
    def grid(self) -> int:
        return self.model.config.grid_size

    @property
    def num_classes(self) -> int:
        return self.model.config.num_classes

    def sampler(self, sampling: SamplingConfig, rows: int, compiled: bool, editing: bool) -> Callable:
        """make_sampler's function for this layout, built on the first click that needs it and reused after:
        the CUDA path captures its graphs once per layout, not once per click. The key holds what the
        fast sampler keys its graphs on that the page can vary (batch, steps, guidance, cache dtype, known
        tokens or not), so alternating between a few layouts replays instead of recapturing."""
        if compiled and self.device.type != "cuda":
            raise UserError(f"compiled layers run on CUDA only; this page runs on {self.device.type}")
        key = (compiled, rows, sampling.captured_settings(), editing)
        if key not in self.samplers:
            self.samplers[key] = make_sampler(self.model, compile_layers=compiled)
            while len(self.samplers) > SAMPLERS_KEPT:
                self.samplers.popitem(last=False)
        self.samplers.move_to_end(key)
        return self.samplers[key]

    def render(self, tokens: torch.Tensor, zoom: int = DIGITS_ZOOM) -> np.ndarray:
        """(B, N) tokens -> (B, H, W, 3) uint8; digits are enlarged zoom times without smoothing."""
        tokens = tokens.reshape(len(tokens), -1)
        return tokens_to_display(tokens, self.grid, self.vq, self.model.config.vocab_size, zoom).numpy()

    @torch.inference_mode()
    def encode(self, picture: np.ndarray) -> torch.Tensor:
        """(H, W, 3 or 4) uint8 picture -> (g, g) tokens: digits by grey level, else ADM crop + VQ encoding."""
        image = Image.fromarray(np.asarray(picture, dtype=np.uint8)).convert("RGB")
        if self.vq is None:
            grey = np.asarray(image.convert("L").resize((self.grid, self.grid), Image.BOX), dtype=np.float32)
            levels = self.model.config.vocab_size - 1
            return torch.from_numpy(np.rint(grey / 255 * levels)).long().to(self.device)
        from dataset.transforms import center_crop_adm, to_model_input

        pixels = torch.from_numpy(to_model_input(center_crop_adm(image, self.image_size)))[None].to(self.device)
        return self.vq.encode_to_indices(pixels).view(self.grid, self.grid)

    def token_mask(self, painted: np.ndarray) -> torch.Tensor:
        """(H, W) painted share in [0, 1] over the picture -> (g, g) bool, True where painted."""
        image = Image.fromarray(np.uint8(np.clip(painted, 0, 1) * 255))
        if self.vq is not None:
            from dataset.transforms import center_crop_adm

            image = center_crop_adm(image, self.image_size).convert("L")
        share = np.asarray(image.resize((self.grid, self.grid), Image.BOX), dtype=np.float32) / 255
        return torch.from_numpy(share >= PAINTED_FRACTION).to(self.device)


def demo_model(model: torch.nn.Module, vq: Optional[torch.nn.Module]) -> DemoModel:
    """A loaded network (and tokenizer, None for digits) as the page's model."""
    device = model.embeddings.weight.device
    if vq is None and model.config.vocab_size > 256:
        raise UserError("this model makes VQ tokens: pass --vq-ckpt (LlamaGen's vq_ds16_c2i.pt, or hf://...) "
                        "to see pictures")
    image_size = model.config.grid_size * (DIGITS_ZOOM if vq is None else 16)
    return DemoModel(model, vq, device, image_size)


NO_CHECKPOINT = ("no digits checkpoint in {results}/: train one with `bash scripts/demo.sh` (a few minutes on a "
                 "CPU), or start the app with --gpt-ckpt, or --gpt-model ARPG-L/XL/XXL for the released weights")


def open_model(args) -> DemoModel:
    """The page's model from app.py's flags (autoregressive/model_args.py's, plus --results-dir and --device),
    loaded as the samplers load it: --gpt-ckpt a file, hf://owner/repo/file, or omitted (the released weights
    of ARPG-L/XL/XXL, or the newest digits run under --results-dir); the VQ-16 tokenizer likewise. UserError
    says what to pass when something is missing."""
    import argparse

    from autoregressive.model_args import check_model_args, model_from_args
    from autoregressive.utils.device import resolve_device

    if args.gpt_ckpt is None and args.gpt_model == "ARPG-digits":
        found = find_checkpoint(args.results_dir)
        if found is None:
            raise UserError(NO_CHECKPOINT.format(results=args.results_dir))
        args = argparse.Namespace(**{**vars(args), "gpt_ckpt": found})
    check_model_args(args)
    device = resolve_device(args.device or ("cpu" if args.gpt_model == "ARPG-digits" else "auto"))
    return demo_model(*model_from_args(args, device))
