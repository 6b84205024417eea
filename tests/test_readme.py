"""The README and the docs/ pages stay short, their links resolve, and their blocks that can run on a CPU
run as written, on tiny models.

A block is run by the suite when the line before its fence is `<!-- block: NAME -->`; NAME says which test
runs it (the RUNS_HERE table below, or one of ELSEWHERE's tests, which need their own fixtures). Blocks
without a marker need a GPU, ImageNet or the released weights.
"""
import re
import runpy
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from autoregressive.models.arpg import ARPG_models
from tokenizer.vq_model import VQ_models

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKED = re.compile(r"^<!-- block: ([\w-]+) -->\n```(\w+)\n(.*?)^```", flags=re.S | re.M)
DIGITS_CKPT = "results/digits/000-ARPG-digits/checkpoints/0001200.pt"

# Marked blocks run by tests in other files, which build what the block needs (a Hub cache, a condition map).
ELSEWHERE = {"quick-start": "tests/test_pretrained.py", "control-python": "tests/test_condition_data.py"}


def marked_blocks() -> dict:
    """{name: (page, language, text)} of every marked block in the README and docs/; names are unique."""
    blocks = {}
    for page in PAGES:
        for name, language, text in MARKED.findall(page.read_text()):
            assert name not in blocks, f"block name {name!r} used twice ({blocks[name][0].name}, {page.name})"
            blocks[name] = (page, language, text)
    return blocks


def marked_block(name: str) -> str:
    """The text of the block marked `name`, for the tests that run it."""
    return marked_blocks()[name][2]


def replaced(text: str, replacements: dict) -> str:
    """text with each key replaced by its value; every key must occur, so a changed page fails loudly."""
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def shell_commands(text: str) -> list:
    """The `python ...` command lines of a bash block (continuations joined, comments dropped) as argv lists."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            assert argv[0] == "python", f"only python commands run here: {line}"
            commands.append(argv[1:])
    return commands


def run_command(argv: list, monkeypatch, exit_code: int = 0) -> None:
    """Run `python argv...` in this process, as the shell would from the current folder."""
    module = argv[1] if argv[0] == "-m" else None
    args = argv[2:] if module else argv[1:]
    monkeypatch.setattr(sys, "argv", [module or argv[0], *args])
    try:
        if module:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(str(ROOT / argv[0]), run_name="__main__")
    except SystemExit as stop:
        assert (stop.code or 0) == exit_code, f"{' '.join(argv)} exited with {stop.code}"
        return
    assert exit_code == 0, f"{' '.join(argv)} did not fail"


@pytest.fixture(scope="module")
def digits_data(tmp_path_factory):
    """The demo's data folder (`python -m dataset.digits`), made once for this file's tests."""
    from dataset import digits
    out = tmp_path_factory.mktemp("digits") / "data" / "digits"
    digits.main(["--out", str(out)])
    return out


@pytest.fixture
def workdir(tmp_path, monkeypatch, digits_data):
    """A folder laid out as after `bash scripts/demo.sh`: data/digits/ and a digits checkpoint at the path
    the pages use (random weights: the blocks are checked to run, not to draw good digits)."""
    (tmp_path / "data").symlink_to(digits_data.parent, target_is_directory=True)
    torch.manual_seed(0)
    ckpt = tmp_path / DIGITS_CKPT
    ckpt.parent.mkdir(parents=True)
    torch.save({"model": ARPG_models["ARPG-digits"]().state_dict()}, ckpt)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    return tmp_path


def run_train_digits(text, monkeypatch, workdir, capsys):
    text = replaced(text, {"--max-steps 200": "--max-steps 1", "--ckpt-every 200": "--ckpt-every 1",
                           "--log-every 100": "--log-every 1"})
    for argv in shell_commands(text):
        run_command(argv, monkeypatch)
    assert (workdir / "results/digits/001-ARPG-digits/checkpoints/0000001.pt").is_file()


def run_sample_grid_digits(text, monkeypatch, workdir, capsys):
    [argv] = shell_commands(text)
    run_command(argv, monkeypatch)
    assert (workdir / "samples/digits.png").is_file()


def run_sample_ddp_digits(text, monkeypatch, workdir, capsys):
    [argv] = shell_commands(replaced(text, {"--num-fid-samples 100": "--num-fid-samples 20",
                                            "--per-proc-batch-size 50": "--per-proc-batch-size 10"}))
    run_command(argv, monkeypatch)
    [npz] = (workdir / "samples").glob("*.npz")
    assert np.load(npz)["arr_0"].shape[0] == 20


def run_edit_digits(text, monkeypatch, workdir, capsys):
    [argv] = shell_commands(replaced(text, {"--num-samples 6": "--num-samples 2"}))
    run_command(argv + ["--step", "4"], monkeypatch)
    assert (workdir / "results/digits/inpaint.png").is_file()


def run_control_digits(text, monkeypatch, workdir, capsys):
    text = replaced(text, {"--max-steps 1200": "--max-steps 1",
                           "digits_shape/000-ARPG-digits/checkpoints/0001200.pt":
                           "digits_shape/000-ARPG-digits/checkpoints/0000001.pt"})
    train, sample, evaluate = shell_commands(text)
    run_command(train, monkeypatch)
    run_command(sample + ["--out", "samples/control.png"], monkeypatch)
    assert (workdir / "samples/control.png").is_file()
    assert evaluate[:2] == ["-m", "scripts.eval_digits_control"]  # 360 digits x 10 settings: too slow here


def run_sweep_digits(text, monkeypatch, workdir, capsys):
    [argv] = shell_commands(replaced(text, {"--cfg-scales 1 1.5 2 3 4": "--cfg-scales 1 2",
                                            "--num-samples 200": "--num-samples 20", "--step 16": "--step 4"}))
    run_command(argv + ["--cfg-schedules", "linear"], monkeypatch)
    assert (workdir / "results/sweep-digits/sweep.csv").is_file()
    assert "best cfg scale" in capsys.readouterr().out


def run_bad_input(text, monkeypatch, workdir, capsys):
    command, expected = text.strip().splitlines()
    assert command.startswith("$ python ")
    (workdir / "digits.pt").write_bytes((workdir / DIGITS_CKPT).read_bytes())
    run_command(shlex.split(command[2:])[1:], monkeypatch, exit_code=2)
    assert capsys.readouterr().err.strip().splitlines()[-1] == expected


RUNS_HERE = {"train-digits": run_train_digits, "sample-grid-digits": run_sample_grid_digits,
             "sample-ddp-digits": run_sample_ddp_digits, "edit-digits": run_edit_digits,
             "control-digits": run_control_digits, "sweep-digits": run_sweep_digits,
             "bad-input": run_bad_input}


def test_every_marked_block_has_a_test_and_every_test_its_block():
    assert set(marked_blocks()) == set(RUNS_HERE) | set(ELSEWHERE) | {"from-python"}


@pytest.mark.parametrize("name", sorted(RUNS_HERE))
def test_the_marked_shell_block_runs(name, monkeypatch, workdir, capsys):
    _, language, text = marked_blocks()[name]
    assert language == ("text" if name == "bad-input" else "bash")
    RUNS_HERE[name](text, monkeypatch, workdir, capsys)


def test_the_from_python_block_runs(tmp_path):
    block = marked_block("from-python")
    torch.manual_seed(0)
    gpt, vq = tmp_path / "gpt.pt", tmp_path / "vq.pt"
    torch.save({"model": ARPG_models["ARPG-tiny"]().state_dict()}, gpt)
    torch.save({"model": VQ_models["VQ-16"]().state_dict()}, vq)
    block = replaced(block, {'"ARPG-L"': '"ARPG-tiny"', '"arpg_300m.pt"': repr(str(gpt)), '"vq_ds16_c2i.pt"': repr(str(vq)),
                             'device = "cuda"': 'device = "cpu"', 'precision="bf16"': 'precision="none"',
                             "num_steps=64": "num_steps=8",
                             "[207, 360]": "[207]"})  # one image: the VQ decoder's CPU time (as the quick start's test)
    scope = {}
    exec(compile(block, "docs/sampling.md", "exec"), scope)
    assert scope["tokens"].shape == (1, 256)
    assert scope["images"].shape == (1, 256, 256, 3) and scope["images"].dtype == torch.uint8
    assert scope["logits"].shape == (1, 256, 16384) and torch.isfinite(scope["loss"])


def test_the_readme_stays_short():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300, "README.md is over 300 lines: move detail to a docs/ page"
    assert len(text.encode()) <= 20_000, "README.md is over 20 KB: move detail to a docs/ page"
    for page in PAGES[1:]:
        assert len(page.read_text().splitlines()) <= 400, f"{page.name} is over 400 lines: split it"


def heading_anchors(page: Path) -> set:
    """GitHub's anchors of the page's headings: lower case, punctuation dropped, spaces as dashes."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES + sorted((ROOT / "docs" / "results").glob("*.md")), ids=lambda page: page.name)
def test_relative_links_resolve(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name} links to {target}, which does not exist"
        if anchor and file.suffix == ".md":
            assert anchor in heading_anchors(file), f"{page.name} links to {target}: no such heading"
