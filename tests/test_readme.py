"""The README's Python block runs as written, on a tiny model with random weights on the CPU."""
import re
from pathlib import Path

import torch

from autoregressive.models.arpg import ARPG_models
from tokenizer.vq_model import VQ_models

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_python_block_of_the_readme_runs(tmp_path):
    [block] = re.findall(r"## From Python\n\n```python\n(.*?)```", README.read_text(), flags=re.S)
    torch.manual_seed(0)
    gpt, vq = tmp_path / "gpt.pt", tmp_path / "vq.pt"
    torch.save({"model": ARPG_models["ARPG-tiny"]().state_dict()}, gpt)
    torch.save({"model": VQ_models["VQ-16"]().state_dict()}, vq)
    replacements = {'"ARPG-L"': '"ARPG-tiny"', '"arpg_300m.pt"': repr(str(gpt)), '"vq_ds16_c2i.pt"': repr(str(vq)),
                    'device = "cuda"': 'device = "cpu"', 'precision="bf16"': 'precision="none"',
                    "num_steps=64": "num_steps=8"}
    for old, new in replacements.items():
        assert old in block, old
        block = block.replace(old, new)
    scope = {}
    exec(compile(block, str(README), "exec"), scope)
    assert scope["tokens"].shape == (2, 256)
    assert scope["images"].shape == (2, 256, 256, 3) and scope["images"].dtype == torch.uint8
    assert scope["logits"].shape == (2, 256, 16384) and torch.isfinite(scope["loss"])
