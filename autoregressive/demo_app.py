"""What the web demo (app.py) does, without the web page: find and load a model, sample a grid, and edit an
image under a painted mask. DemoApp's methods return (result, message) and never raise on bad input: the
page shows the message instead of a stack trace.
"""
import glob
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import make_grid

from autoregressive import editing
from autoregressive.generate import SamplingConfig, check_class_ids
from autoregressive.fast_generate import make_sampler
from autoregressive.render import tokens_to_display
from autoregressive.utils.device import resolve_device
from autoregressive.weights import load_gpt, load_vq

TASKS = {"inpaint": "regenerate the painted area",
         "outpaint": "keep the painted area, regenerate everything else",
         "class-edit": "regenerate the painted area under the chosen class"}
DIGITS_ZOOM = 32  # an 8x8 digit is shown at 256 px, so the brush can cover single tokens
PAINTED_FRACTION = 0.25  # a token is regenerated when at least this share of its area is painted
MAX_IMAGES = 64
NO_CHECKPOINT = ("no digits checkpoint in {results}/: train one with `bash scripts/demo.sh` (about 4 minutes "
                 "on a CPU), or start the app with --gpt-ckpt (and --vq-ckpt for ImageNet weights)")


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

    @property
    def grid(self) -> int:
        return self.model.config.grid_size

    @property
    def num_classes(self) -> int:
        return self.model.config.num_classes

    def sampler(self, sampling: SamplingConfig, seed: int):
        """(labels, known=None, known_mask=None) -> tokens, with its own generator."""
        decode, generator = make_sampler(self.model), torch.Generator(self.device).manual_seed(int(seed))
        return lambda labels, **known: decode(labels, sampling, generator, **known)

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


@dataclass(frozen=True)
class PageDefaults:
    """Starting values of the page's controls, by model."""
    classes: str
    per_class: int
    steps: int
    cfg_scale: float


def page_defaults(demo: Optional[DemoModel]) -> PageDefaults:
    if demo is None or demo.vq is None:  # the digits demo: CFG 2.0 and 16 steps, as scripts/demo.sh judges it
        return PageDefaults("0 1 2 3 4 5 6 7 8 9", 4, 16, 2.0)
    return PageDefaults("207 360 387 974", 2, 64, 4.0)


def load_demo_model(gpt_model: str, gpt_ckpt: str, vq_model: str = "VQ-16", vq_ckpt: Optional[str] = None,
                    device: str = "auto", precision: str = "none") -> DemoModel:
    for path in (gpt_ckpt, vq_ckpt):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
    torch_device = resolve_device(device)
    model = load_gpt(gpt_model, gpt_ckpt, torch_device, precision)
    if vq_ckpt is None and model.config.vocab_size > 256:
        raise ValueError(f"{gpt_model} makes VQ tokens: pass --vq-ckpt (LlamaGen's vq_ds16_c2i.pt) to see pictures")
    vq = load_vq(vq_model, vq_ckpt, torch_device) if vq_ckpt else None
    image_size = model.config.grid_size * (DIGITS_ZOOM if vq is None else 16)
    return DemoModel(model, vq, torch_device, image_size)


def parse_classes(text: str, num_classes: int) -> List[int]:
    """'1, 3 7' -> [1, 3, 7], with a message naming the bad entry."""
    entries = text.replace(",", " ").split()
    if not entries:
        raise ValueError("enter at least one class id")
    try:
        classes = [int(entry) for entry in entries]
    except ValueError:
        raise ValueError(f"class ids are whole numbers in 0..{num_classes - 1}, got {text!r}") from None
    check_class_ids(torch.tensor(classes), num_classes)
    return classes


def painted_area(editor_value) -> Tuple[np.ndarray, np.ndarray]:
    """An image editor's value {"background", "layers", ...} -> (picture (H, W, 3) uint8, painted (H, W) in
    [0, 1]): the brush strokes of all layers, by their alpha (or brightness for layers without alpha)."""
    background = editor_value.get("background") if isinstance(editor_value, dict) else None
    if background is None:
        raise ValueError("no image to edit: upload one, or generate a grid and send a sample to the editor")
    background = np.asarray(background)
    painted = np.zeros(background.shape[:2], dtype=np.float32)
    for layer in editor_value.get("layers") or []:
        layer = np.asarray(layer, dtype=np.float32) / 255
        if layer.shape[:2] != painted.shape:
            raise ValueError(f"the mask is {layer.shape[1]}x{layer.shape[0]} but the image is "
                             f"{painted.shape[1]}x{painted.shape[0]}; paint on the image itself")
        strength = layer[..., 3] if layer.ndim == 3 and layer.shape[2] == 4 else layer.reshape(*painted.shape, -1).max(-1)
        painted = np.maximum(painted, strength)
    return background[..., :3] if background.ndim == 3 else np.stack([background] * 3, -1), painted


def sampling_config(steps, cfg_scale, cfg_schedule, temperature, sample_schedule="arccos") -> SamplingConfig:
    return SamplingConfig(num_steps=int(steps), cfg_scale=float(cfg_scale), cfg_schedule=cfg_schedule,
                          sample_schedule=sample_schedule, temperature=float(temperature))


def tile(images: np.ndarray, per_row: int) -> np.ndarray:
    """(B, H, W, 3) uint8 -> one (H', W', 3) uint8 picture, per_row images a row, 2 px apart."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
    return make_grid(pixels, nrow=per_row, padding=2, pad_value=255).permute(1, 2, 0).numpy()


class DemoApp:
    """The page's actions on one model (or on none, with the reason to show)."""

    def __init__(self, demo: Optional[DemoModel], status: str):
        self.demo, self.status = demo, status

    @classmethod
    def open(cls, gpt_model: str = "ARPG-digits", gpt_ckpt: Optional[str] = None, vq_model: str = "VQ-16",
             vq_ckpt: Optional[str] = None, device: str = "auto", precision: str = "none",
             results_dir: str = "results") -> "DemoApp":
        gpt_ckpt = gpt_ckpt or find_checkpoint(results_dir)
        if gpt_ckpt is None:
            return cls(None, NO_CHECKPOINT.format(results=results_dir))
        try:
            demo = load_demo_model(gpt_model, gpt_ckpt, vq_model, vq_ckpt, device, precision)
        except (ValueError, FileNotFoundError, RuntimeError, KeyError) as error:
            return cls(None, f"could not load {gpt_ckpt}: {error}")
        return cls(demo, f"{gpt_model} from {gpt_ckpt} on {demo.device}")

    def _run(self, action, *args):
        if self.demo is None:
            return None, f"Error: {self.status}"
        try:
            return action(*args)
        except (ValueError, FileNotFoundError, RuntimeError) as error:
            return None, f"Error: {error}"

    def generate(self, classes: str, per_class, steps, cfg_scale, cfg_schedule, temperature, seed):
        """-> ((grid picture, the samples (B, H, W, 3)) or None, message); a row per class."""
        return self._run(self._generate, classes, per_class, steps, cfg_scale, cfg_schedule, temperature, seed)

    def _generate(self, classes, per_class, steps, cfg_scale, cfg_schedule, temperature, seed):
        demo, per_class = self.demo, int(per_class)
        labels = parse_classes(classes, demo.num_classes)
        if not 1 <= per_class * len(labels) <= MAX_IMAGES:
            raise ValueError(f"ask for 1 to {MAX_IMAGES} images in all (classes x images per class)")
        sampling = sampling_config(steps, cfg_scale, cfg_schedule, temperature)
        condition = torch.tensor(labels, device=demo.device).repeat_interleave(per_class)
        tokens = demo.sampler(sampling, seed)(condition)
        samples = demo.render(tokens)  # editor-sized
        grid = tile(demo.render(tokens, zoom=DIGITS_ZOOM // 4), per_class)  # digits at 64 px in the grid
        return (grid, samples), f"{len(samples)} samples of classes {labels}, seed {int(seed)}"

    def edit(self, editor_value, task: str, class_label, num_samples, steps, cfg_scale, cfg_schedule,
             temperature, seed):
        """-> (a row: input, mask (regenerated area dimmed), results; or None, message)."""
        return self._run(self._edit, editor_value, task, class_label, num_samples, steps, cfg_scale, cfg_schedule,
                         temperature, seed)

    def _edit(self, editor_value, task, class_label, num_samples, steps, cfg_scale, cfg_schedule, temperature, seed):
        demo, num_samples = self.demo, int(num_samples)
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {list(TASKS)}")
        if not 1 <= num_samples <= 16:
            raise ValueError("ask for 1 to 16 results")
        picture, painted = painted_area(editor_value)
        painted_tokens = demo.token_mask(painted)
        if not painted_tokens.any():
            raise ValueError("nothing is painted: paint the area with the brush (a token counts when a quarter "
                             "of it is covered)")
        keep = painted_tokens if task == "outpaint" else ~painted_tokens
        if not keep.any():
            raise ValueError("the mask covers the whole image, so nothing is kept: paint less, or use Generate")
        [label] = parse_classes(str(class_label), demo.num_classes)
        sampler = demo.sampler(sampling_config(steps, cfg_scale, cfg_schedule, temperature), seed)
        tokens = demo.encode(picture)
        results = editing.fill(lambda labels, known, known_mask: sampler(labels, known=known, known_mask=known_mask),
                               tokens, keep, label, num_samples)
        zoom = DIGITS_ZOOM // 2  # digits at 128 px: the row stays readable in the page
        original = demo.render(tokens[None], zoom)
        shade = F.interpolate(keep[None, None].float().cpu(), size=original.shape[1:3], mode="nearest")[0, 0]
        dimmed = (original * (0.25 + 0.75 * shade[..., None].numpy())).astype(np.uint8)
        row = np.concatenate([original, dimmed, demo.render(results, zoom)])
        kept = int(keep.sum())
        return tile(row, len(row)), (f"{task}: kept {kept} of {keep.numel()} tokens, regenerated the rest under "
                                     f"class {label}, {num_samples} results")
