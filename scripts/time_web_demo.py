"""Time the web demo's Generate button as the page runs it (demo/actions.py), click after click, and count
the samplers built and CUDA graphs captured: a repeated click must reuse its sampler and replay its graphs.

    python -m scripts.time_web_demo --gpt-model ARPG-L --device cuda        # random weights, VQ-16 decoding

Prints one line per click (seconds, img/s, samplers built, graph captures so far) and exits non-zero if a
click with a layout seen before built a sampler or captured graphs again.
"""
import argparse
import sys

import torch

from autoregressive.fast_generate import GraphedSteps
from autoregressive.models.arpg import ARPG_models
from autoregressive.utils.device import resolve_device
from autoregressive.weights import PRECISIONS, load_gpt, prepare_vq
from demo.actions import Actions
from demo.model import demo_model

CAPTURES = []


def count_captures() -> None:
    """Wrap GraphedSteps._capture so each capture of a decoding layout's graphs is counted."""
    capture = GraphedSteps._capture

    def counted(self):
        CAPTURES.append(len(self.steps))
        return capture(self)

    GraphedSteps._capture = counted


def click(actions: Actions, name: str, action, *values) -> float:
    start = len(CAPTURES), len(actions.demo.samplers)
    result, message = action(*values)
    print(f"{name:<28} {message.split(', seed')[0].split(', regenerated')[0]:<44} "
          f"samplers {len(actions.demo.samplers)} (+{len(actions.demo.samplers) - start[1]}), "
          f"graph captures {len(CAPTURES)} (+{len(CAPTURES) - start[0]})", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="Time the web demo's clicks (random weights).")
    parser.add_argument("--gpt-model", choices=list(ARPG_models), default="ARPG-L")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--precision", choices=list(PRECISIONS), default="none", help="weights dtype")
    parser.add_argument("--clicks", type=int, default=3, help="clicks with the same layout")
    parser.add_argument("--step", type=int, default=64)
    parser.add_argument("--compiled", action="store_true", help="also time clicks with compiled layers (CUDA)")
    args = parser.parse_args()
    from tokenizer.vq_model import VQ_models

    torch.manual_seed(0)
    device = resolve_device(args.device)
    model = load_gpt(args.gpt_model, None, device, args.precision)
    vq = prepare_vq(VQ_models["VQ-16"](), device) if model.config.vocab_size > 256 else None
    actions = Actions(demo_model(model, vq), f"{args.gpt_model} (random weights) on {device}")
    print(actions.status, torch.cuda.get_device_name() if device.type == "cuda" else "")
    count_captures()
    ids = (207, 360, 387, 974) if actions.demo.num_classes == 1000 else (0, 1, 2, 3)
    classes = [actions.demo.classes.choice(i) for i in ids]

    def controls(compiled=False, seed=0):
        return [args.step, 4.0, "linear", 1.0, 0, 1.0, "weights", compiled, seed]

    for compiled in (False, True) if args.compiled else (False,):
        tag = "compiled " if compiled else ""
        built = len(actions.demo.samplers), len(CAPTURES)
        for index in range(args.clicks):  # 4 classes x 2 = 8 images, a new seed each click
            click(actions, f"{tag}generate 8, click {index + 1}", actions.generate, classes, 2,
                  *controls(compiled, index))
        first = len(actions.demo.samplers) - built[0], len(CAPTURES) - built[1]
        click(actions, f"{tag}generate 4 (other shape)", actions.generate, classes, 1, *controls(compiled))
        click(actions, f"{tag}generate 8 again", actions.generate, classes, 2, *controls(compiled, 99))
        again = len(actions.demo.samplers) - built[0], len(CAPTURES) - built[1]
        if first[0] != 1 or (device.type == "cuda" and first[1] != 1) or again[0] != 2 or again[1] > 2 * first[1]:
            sys.exit(f"repeated clicks rebuilt samplers or recaptured graphs: {first} after the 8-image clicks, "
                     f"{again} after one other shape and the 8-image layout again (samplers, captures)")
    generation = actions.generate(classes, 1, *controls())[0]
    (value, label, origin), _ = actions.send(generation, 1)
    side = value["background"].shape[0]
    value["layers"] = [torch.zeros(side, side, 4, dtype=torch.uint8).index_fill_(0, torch.arange(side // 2, side),
                                                                                  255).numpy()]
    for index in range(2):
        click(actions, f"inpaint 4, click {index + 1}", actions.edit, value, origin, "inpaint", label, None, 4,
              *controls(False, index))
    print("ok: repeated clicks reuse their sampler and graphs")


if __name__ == "__main__":
    main()
