"""What the page's buttons do (app.py only lays the page out): generate a gallery of chosen classes, send
one sample (with its class) to the editor, and edit a picture under a painted mask.

The actions raise UserError for bad input and let any other exception raise too; `answer` is the
page's boundary: an input error becomes its one line, a bug a generic line with the traceback in the log.
"""
import html
import logging
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from autoregressive import editing
from autoregressive.utils.cli import UserError
from autoregressive.utils.device import synchronize
from demo.fields import Settings, number
from demo.model import DemoModel, open_model

TASKS = {"inpaint": "regenerate the painted area under the image's class",
         "outpaint": "keep the painted area, regenerate everything else under the image's class",
         "class-edit": "regenerate the painted area under the new class"}
MAX_IMAGES = 64
MAX_EDITS = 16
BUG_LINE = "Error: something went wrong on the server (a bug, not your input); the app's log has the details"
SAME_PICTURE = 8.0  # mean |difference| in 0..255 under which the editor still holds the sent sample (the
# browser may re-encode it lossily); an upload differs by far more
PICKED = "picked"  # the image class was picked by hand: it stands for whatever picture is in the editor
log = logging.getLogger("arpg.demo")


@dataclass
class Reply:
    """An action's answer to the page: its result (None when it failed: the page keeps what it shows)
    and one line."""
    result: object
    message: str
    error: bool = False

    def html(self) -> str:
        """The line as the page shows it: errors in a red box, results in a plain one."""
        kind = "arpg-error" if self.error else "arpg-ok"
        role = ' role="alert"' if self.error else ""
        return f'<div class="arpg-message {kind}"{role}>{html.escape(self.message)}</div>' if self.message else ""


def answer(action: Callable, *values) -> Reply:
    """Run a page action: (result, line) -> Reply; a UserError -> an error Reply with its message; any other
    exception -> the generic BUG_LINE, its traceback logged."""
    try:
        result, message = action(*values)
    except UserError as error:
        return Reply(None, f"Error: {error}", error=True)
    except Exception:  # a bug: the page must still answer, the log gets the traceback
        log.exception("page action %s failed", getattr(action, "__name__", action))
        return Reply(None, BUG_LINE, error=True)
    return Reply(result, message)


@dataclass(frozen=True)
class Generation:
    """A generated batch: pictures at the editor's size, and each one's class."""
    images: np.ndarray  # (B, H, W, 3) uint8
    labels: Tuple[int, ...]
    captions: Tuple[str, ...]
    per_row: int  # pictures of one class: the gallery's columns

    def gallery(self) -> List[Tuple[np.ndarray, str]]:
        return list(zip(self.images, self.captions))


class Actions:
    """The page's actions on one model, or on none, with the reason shown for every action."""

    def __init__(self, demo: Optional[DemoModel], status: str):
        self.demo, self.status = demo, status

    @classmethod
    def open(cls, args) -> "Actions":
        """The model app.py's flags name (see open_model); a UserError (no checkpoint, a bad file, offline)
        leaves a page that says so."""
        try:
            demo = open_model(args)
        except UserError as error:
            return cls(None, f"could not load {args.gpt_model}: {error}")
        return cls(demo, f"{args.gpt_model} on {demo.device}, {demo.num_classes} classes, "
                         f"{demo.grid}x{demo.grid} tokens a picture")

    def _model(self) -> DemoModel:
        if self.demo is None:
            raise UserError(self.status)
        return self.demo

    def settings(self, *controls) -> Settings:
        """The page's sampling controls (Settings.FIELDS order), checked against the model."""
        config = self._model().model.config
        return Settings.from_fields(*controls, max_steps=config.block_size, vocab_size=config.vocab_size)

    def caption(self, label: int) -> str:
        choice = self._model().classes.choice(label)
        return f"class {choice}" if choice == str(label) else choice

    def generate(self, classes, per_class, *controls) -> Tuple[Generation, str]:
        """A row of per_class pictures for each chosen class."""
        demo = self._model()
        labels = demo.classes.parse_many(classes)
        per_class = number("images per class", per_class, 1, MAX_IMAGES, whole=True)
        if per_class * len(labels) > MAX_IMAGES:
            raise UserError(f"{len(labels)} classes x {per_class} images is {len(labels) * per_class}: ask for "
                            f"at most {MAX_IMAGES} images in all")
        settings = self.settings(*controls)
        condition = torch.tensor(labels, device=demo.device).repeat_interleave(per_class)
        sampler = demo.sampler(settings.sampling, len(condition), settings.compiled, editing=False)
        start = time.perf_counter()
        tokens = sampler(condition, settings.sampling, torch.Generator(demo.device).manual_seed(settings.seed))
        images = demo.render(tokens)
        synchronize(demo.device)
        seconds = time.perf_counter() - start
        labels_out = tuple(int(label) for label in condition.tolist())
        generation = Generation(images, labels_out, tuple(self.caption(label) for label in labels_out), per_class)
        return generation, (f"{len(images)} images in {seconds:.2f} s ({len(images) / seconds:.1f} img/s), "
                            f"seed {settings.seed}, {settings.sampling.num_steps} steps")

    def send(self, generation: Optional[Generation], pick) -> Tuple[Tuple[dict, str, np.ndarray], str]:
        """Sample number `pick` (1 = first) -> ((the editor's value, its class as the class picker shows it, the
        picture: the origin that edit checks the class against), line)."""
        demo = self._model()
        if not generation:
            raise UserError("nothing to send yet: generate images first, then pick one")
        index = number("sample to edit", pick, 1, len(generation.labels), whole=True) - 1
        picture, label = generation.images[index], generation.labels[index]
        value = {"background": picture, "layers": [], "composite": picture}
        return (value, demo.classes.choice(label), picture), (
            f"sample {index + 1} ({self.caption(label)}) is in the editor: {picture.shape[1]}x{picture.shape[0]} "
            f"px, {demo.grid}x{demo.grid} tokens; paint over what to change")

    def edit(self, editor_value, origin, task: str, image_class, new_class, num_results, *controls):
        """-> (gallery: input, its kept area, the results; line). origin: where image_class came from: the
        picture sent with it, PICKED (by hand), or None (nothing sent or picked)."""
        demo = self._model()
        if task not in TASKS:
            raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        picture, painted = painted_area(editor_value)
        if image_class in (None, "", []) or (origin is not PICKED and not same_picture(origin, picture)):
            raise UserError("image class: which class is this picture? Pick it under \"image class\" (a sample "
                            "sent from Generate brings its own)")
        label = demo.classes.parse(image_class, "image class")
        if task == "class-edit":
            if new_class in (None, "", []):
                raise UserError("new class is empty: pick the class to paint in")
            label = demo.classes.parse(new_class, "new class")
        num_results = number("results", num_results, 1, MAX_EDITS, whole=True)
        settings = self.settings(*controls)
        painted_tokens = demo.token_mask(painted)
        if not painted_tokens.any():
            raise UserError("nothing is painted: paint the area with the brush (a token counts when a quarter "
                            "of it is covered)")
        keep = painted_tokens if task == "outpaint" else ~painted_tokens
        if not keep.any():
            raise UserError("the mask covers the whole image, so nothing is kept: paint less, or use Generate")
        sampler = demo.sampler(settings.sampling, num_results, settings.compiled, editing=True)
        generator = torch.Generator(demo.device).manual_seed(settings.seed)
        tokens = demo.encode(picture)
        results = editing.fill(lambda labels, known, known_mask: sampler(labels, settings.sampling, generator,
                                                                         known=known, known_mask=known_mask),
                               tokens, keep, label, num_results)
        original = demo.render(tokens[None])
        shade = F.interpolate(keep[None, None].float().cpu(), size=original.shape[1:3], mode="nearest")[0, 0]
        dimmed = (original * (0.25 + 0.75 * shade[..., None].numpy())).astype(np.uint8)
        gallery = [(original[0], "input"), (dimmed[0], "kept (bright)")]
        gallery += [(image, f"result {i + 1}") for i, image in enumerate(demo.render(results))]
        return gallery, (f"{task}: kept {int(keep.sum())} of {keep.numel()} tokens, regenerated the rest under "
                         f"{self.caption(label)}, {num_results} results")


def same_picture(sent: Optional[np.ndarray], picture: np.ndarray) -> bool:
    """Whether the editor still holds the picture that was sent to it (not an upload)."""
    if sent is None or not isinstance(sent, np.ndarray) or sent.shape != picture.shape:
        return False
    return float(np.abs(sent.astype(np.float32) - picture.astype(np.float32)).mean()) < SAME_PICTURE


def painted_area(editor_value) -> Tuple[np.ndarray, np.ndarray]:
    """An image editor's value {"background", "layers", ...} -> (picture (H, W, 3) uint8, painted (H, W) in
    [0, 1]): the brush strokes of all layers, by their alpha (or brightness for layers without alpha)."""
    background = editor_value.get("background") if isinstance(editor_value, dict) else None
    if background is None:
        raise UserError("no image to edit: upload one, or generate images and send a sample to the editor")
    background = np.asarray(background)
    painted = np.zeros(background.shape[:2], dtype=np.float32)
    for layer in editor_value.get("layers") or []:
        layer = np.asarray(layer, dtype=np.float32) / 255
        if layer.shape[:2] != painted.shape:
            raise UserError(f"the mask is {layer.shape[1]}x{layer.shape[0]} but the image is "
                            f"{painted.shape[1]}x{painted.shape[0]}; paint on the image itself")
        strength = layer[..., 3] if layer.ndim == 3 and layer.shape[2] == 4 else layer.reshape(*painted.shape, -1).max(-1)
        painted = np.maximum(painted, strength)
    return background[..., :3] if background.ndim == 3 else np.stack([background] * 3, -1), painted
