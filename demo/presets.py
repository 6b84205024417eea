"""The page's words and starting values: what ARPG is, what each control does, the controls' defaults and
a few example settings, by model (the digits demo or an ImageNet model)."""
from dataclasses import dataclass
from typing import Dict, List, Optional

from demo.model import DemoModel

ABOUT = (
    "ARPG draws an image as a grid of tokens, like a language model writes words, but in a **random order** "
    "and **many tokens per step**: each step predicts a set of still-unknown positions at once, each "
    "query asking \"what is at position (row, column)?\" given everything drawn so far. A picture of 256 "
    "tokens takes as few steps as you ask for (64 is the paper's setting). The same model edits pictures "
    "without retraining: the tokens you keep are fed as already drawn, and only the painted ones are "
    "drawn anew (inpaint, outpaint, or under another class).")

CONTROLS_HELP = """
- **classes**: what to draw; one gallery row per class. Type to search the names (ImageNet) or ids.
- **images per class**: the pictures in each row (at most 64 pictures in all).
- **steps**: decoding steps; fewer is faster, more tokens are drawn per step. At most the tokens of a picture.
- **CFG scale**: classifier-free guidance, how strongly the picture follows its class; 1 = no guidance.
- **CFG schedule**: *linear* raises the guidance from 1 to the scale as the picture fills, *constant* keeps it.
- **temperature**: randomness of each draw; below 1 is safer, 0 always takes the likeliest token.
- **top-k / top-p**: draw only among the k likeliest tokens / the likeliest ones covering p of the probability
  (0 and 1 switch them off).
- **KV cache**: *weights* keeps keys and values in the weights' dtype (exact); *int8* / *fp8* store one-byte codes
  (half the memory reads, slightly different pictures).
- **compiled layers** (CUDA): run the layers through torch.compile; faster after the first click, pictures close
  to, not equal to, the default ones.
- **seed**: the same seed and settings give the same pictures.
- **Send to the editor**: the picked sample goes to the Edit tab with its class.
- **Edit**: paint over the picture with the brush. *inpaint* redraws the painted area, *outpaint* keeps it and
  redraws the rest, both under the **image class**; *class-edit* redraws the painted area under the **new class**.
  A token is redrawn when a quarter of it is painted. An uploaded picture needs its class picked.
"""


@dataclass(frozen=True)
class PageDefaults:
    """Starting values of the page's controls, by model."""
    classes: List[str]  # as the class picker shows them
    per_class: int
    steps: int
    cfg_scale: float
    image_size: int  # the editor's canvas


def page_defaults(demo: Optional[DemoModel]) -> PageDefaults:
    if demo is None:
        return PageDefaults([], 4, 16, 2.0, 256)
    if demo.vq is None:  # the digits demo: CFG 2.0 and 16 steps, as scripts/demo.sh judges it
        return PageDefaults(demo.classes.choices, 4, 16, 2.0, demo.image_size)
    return PageDefaults([demo.classes.choice(i) for i in (207, 360, 387, 974)], 2, 64, 4.0, demo.image_size)


def presets(demo: Optional[DemoModel]) -> Dict[str, list]:
    """Example settings by name: classes, images per class, steps, CFG scale, CFG schedule, temperature,
    top-k, top-p, seed (the order of app.py's Examples inputs)."""
    if demo is None:
        return {}
    names = demo.classes.choice
    if demo.vq is None:
        return {"all ten digits, 16 steps": [[names(i) for i in range(10)], 4, 16, 2.0, "linear", 1.0, 0, 1.0, 0],
                "3 and 8 in 8 steps, constant CFG 3": [[names(3), names(8)], 8, 8, 3.0, "constant", 1.0, 0, 1.0, 1],
                "sevens without guidance, top-p 0.9": [[names(7)], 8, 16, 1.0, "linear", 0.8, 0, 0.9, 2]}
    return {"four classes, 64 steps, CFG 4": [[names(i) for i in (207, 360, 387, 974)], 2, 64, 4.0, "linear", 1.0,
                                              0, 1.0, 0],
            "fast: 32 steps": [[names(i) for i in (88, 979, 417, 279)], 2, 32, 4.0, "linear", 1.0, 0, 1.0, 1],
            "strong guidance, top-k 2000, top-p 0.95": [[names(i) for i in (1, 980)], 4, 64, 6.0, "constant", 1.0,
                                                        2000, 0.95, 2]}
