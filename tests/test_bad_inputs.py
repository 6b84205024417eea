"""Bad input, script by script: each case must end with exit code 2 and one `error:` line naming the
value or file, print no traceback, and leave every file and folder of the workspace as it was.

Most cases run in-process (the script's entry through run_main, as `python script.py` runs it); the
SUBPROCESS ones run the real command line, to show that no traceback reaches the terminal.
"""
import hashlib
import importlib
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
import torch
from PIL import Image

from autoregressive.models.arpg import ARPG_models
from autoregressive.utils.cli import InputNotFound, UserError, check_file, run_main, user_message
from dataset.conditions import ConditionInfo, write_condition_info

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    name: str
    entry: str  # a script path or a module run with -m
    argv: Tuple[str, ...]  # "{w}" stands for the workspace folder
    words: Tuple[str, ...]  # the message must contain each
    exit_code: int = 2


def case(name, entry, argv, *words, exit_code=2):
    return Case(name, entry, tuple(argv.split()), words, exit_code)


DIGITS = "--gpt-model ARPG-digits --gpt-ckpt {w}/digits.pt --device cpu"
SAMPLE = f"{DIGITS} --class-labels 1 2 --step 8 --out {{w}}/out/grid.png"
DDP = f"{DIGITS} --sample-dir {{w}}/samples --num-fid-samples 4 --per-proc-batch-size 2 --step 8 --precision none"
EDIT = f"--task inpaint {DIGITS} --step 8 --out {{w}}/out/edit.png"
TRAIN = ("--gpt-model ARPG-tiny --code-path {w}/codes --results-dir {w}/results --vocab-size 32 --num-classes 3 "
         "--image-size 64 --global-batch-size 4 --epochs 1 --num-workers 0 --device cpu")
CONTROL = DDP.replace("digits.pt", "controlled.pt")  # a digits model with a 2-id condition table
EDIT_CONTROL = f"{EDIT.replace('digits.pt', 'controlled.pt')} --digit-index 0 --shape center --condition-vocab-size 2"
SWEEP = f"{DIGITS} --cfg-scales 1 2 --num-samples 4 --per-proc-batch-size 2 --step 4 --out-dir {{w}}/sweep"
EVAL = "{w}/ref.npz {w}/sample.npz --inception-weights {w}/inception.pth --device cpu"

CASES = [
    case("zero samples per class", "sample_c2i.py", f"{SAMPLE} --samples-per-class 0", "--samples-per-class", ">= 1"),
    case("negative guidance", "sample_c2i.py", f"{SAMPLE} --cfg-scale -1", "--cfg-scale", ">= 0"),
    case("zero steps", "sample_c2i.py", f"{SAMPLE} --step 0", "--step", ">= 1"),
    case("more steps than tokens", "sample_c2i.py", f"{SAMPLE} --step 65", "--step 65", "64"),
    case("class past the model's", "sample_c2i.py", f"{SAMPLE} --class-labels 12", "class id 12", "10 classes"),
    case("negative class", "sample_c2i.py", f"{SAMPLE} --class-labels -1", "--class-labels", ">= 0"),
    case("missing checkpoint", "sample_c2i.py", f"{SAMPLE} --gpt-ckpt {{w}}/nowhere.pt", "nowhere.pt", "not found"),
    case("corrupt .pt", "sample_c2i.py", f"{SAMPLE} --gpt-ckpt {{w}}/corrupt.pt", "corrupt.pt", "corrupt"),
    case("corrupt .safetensors", "edit_c2i.py", f"{EDIT} --gpt-ckpt {{w}}/corrupt.safetensors --digit-index 0 "
         "--shape center", "corrupt.safetensors", "not a readable .safetensors file"),
    case("checkpoint of another size", "sample_c2i.py", f"{SAMPLE} --gpt-model ARPG-tiny", "does not fit", "ARPG-digits"),
    case("unknown output format", "sample_c2i.py", f"{SAMPLE} --out {{w}}/out/grid.xyz", "--out", ".xyz"),
    case("zero batch size", "sample_c2i_ddp.py", f"{DDP} --per-proc-batch-size 0", "--per-proc-batch-size", ">= 1"),
    case("negative sample count", "sample_c2i_ddp.py", f"{DDP} --num-fid-samples -5", "--num-fid-samples", "-5"),
    case("zero eval size", "sample_c2i_ddp.py", f"{DDP} --image-size-eval 0", "--image-size-eval", ">= 1"),
    case("top-p of zero", "sample_c2i_ddp.py", f"{DDP} --top-p 0", "top_p", "(0, 1]"),
    case("steps past the grid (after the model loads)", "sample_c2i_ddp.py", f"{DDP} --step 100", "--step 100", "64"),
    case("condition map of another size", "sample_c2i_ddp.py", f"{CONTROL} --condition-vocab-size 2 --condition-map "
         "{w}/grid_5x5.npy", "grid_5x5.npy", "(5, 5)", "64 ids"),
    case("condition ids past the vocabulary", "sample_c2i_ddp.py", f"{CONTROL} --condition-vocab-size 2 "
         "--condition-map {w}/grid_big_ids.npy", "grid_big_ids.npy", "ids 99..99", "--condition-vocab-size"),
    case("condition map without its vocabulary", "sample_c2i_ddp.py", f"{CONTROL} --condition-map {{w}}/shape.npy",
         "--condition-map needs --condition-vocab-size"),
    case("condition folder without condition.json", "sample_c2i_ddp.py", f"{CONTROL} --condition-path {{w}}/codes",
         "codes/condition.json not found"),
    case("condition folder for a class-only model", "sample_c2i_ddp.py",
         f"{DDP} --condition-path {{w}}/shapes", "condition_embeddings.weight", "no condition table"),
    case("condition vocabulary against the folder's", "sample_c2i_ddp.py",
         f"{CONTROL} --condition-path {{w}}/shapes --condition-vocab-size 3", "--condition-vocab-size 3",
         "shapes/condition.json (2)"),
    case("both a condition map and a folder", "sample_c2i_ddp.py",
         f"{CONTROL} --condition-path {{w}}/shapes --condition-map {{w}}/shape.npy", "--condition-map",
         "--condition-path", "one of them"),
    case("more samples than condition maps", "sample_c2i_ddp.py",
         f"{CONTROL} --condition-path {{w}}/shapes --num-fid-samples 5", "--num-fid-samples 5", "shapes (4)"),
    case("condition folder of another grid", "sample_c2i_ddp.py", f"{CONTROL} --condition-path {{w}}/shapes_4x4",
         "shapes_4x4", "4x4", "64 tokens"),
    case("edit under a map of another size", "edit_c2i.py", f"{EDIT_CONTROL} --condition-map {{w}}/grid_5x5.npy",
         "grid_5x5.npy", "(5, 5)"),
    case("edit a class-only model under a map", "edit_c2i.py",
         f"{EDIT_CONTROL.replace('controlled.pt', 'digits.pt')} --condition-map {{w}}/shape.npy", "no condition table"),
    case("expand under a condition map", "edit_c2i.py",
         f"{EDIT_CONTROL.replace('inpaint', 'expand').replace(' --shape center', '')} --condition-map {{w}}/shape.npy",
         "--task expand", "--condition-map"),
    case("code grid of another size", "edit_c2i.py", f"{EDIT} --codes {{w}}/grid_5x5.npy --shape center",
         "grid_5x5.npy", "(5, 5)", "(8, 8)"),
    case("code ids past the vocabulary", "edit_c2i.py", f"{EDIT} --codes {{w}}/grid_big_ids.npy --shape center",
         "grid_big_ids.npy", "vocabulary 0..16"),
    case("digit index out of range", "edit_c2i.py", f"{EDIT} --digit-index 5000 --shape center", "--digit-index 5000",
         "out of range"),
    case("negative digit index", "edit_c2i.py", f"{EDIT} --digit-index -1 --shape center", "--digit-index", ">= 0"),
    case("mask of another aspect", "edit_c2i.py", f"{EDIT} --digit-index 0 --mask-png {{w}}/mask_wide.png",
         "mask_wide.png", "16x8", "square"),
    case("no mask", "edit_c2i.py", f"{EDIT} --digit-index 0", "exactly one mask"),
    case("a mask for expand", "edit_c2i.py", f"{EDIT.replace('inpaint', 'expand')} --digit-index 0 --shape center",
         "--task expand takes no mask"),
    case("box outside the grid", "edit_c2i.py", f"{EDIT} --digit-index 0 --box 0 0 9 9", "8x8 token grid"),
    case("zero edits", "edit_c2i.py", f"{EDIT} --digit-index 0 --shape center --num-samples 0", "--num-samples"),
    case("missing data folder", "extract_codes_c2i.py", "--data-path {w}/no_images --code-path {w}/codes_out "
         "--vq-ckpt {w}/corrupt.pt --device cpu", "--data-path", "no_images", "not found"),
    case("image size the tokenizer cannot split", "extract_codes_c2i.py", "--data-path {w}/images --code-path "
         "{w}/codes_out --vq-ckpt {w}/corrupt.pt --image-size 100 --device cpu", "--image-size 100", "multiple of 16"),
    case("zero epochs", "train_c2i.py", f"{TRAIN} --epochs 0", "--epochs", ">= 1"),
    case("zero global batch", "train_c2i.py", f"{TRAIN} --global-batch-size 0", "--global-batch-size", ">= 1"),
    case("dropout of 1.5", "train_c2i.py", f"{TRAIN} --dropout-p 1.5", "--dropout-p", "[0, 1)"),
    case("token ids past the vocabulary", "train_c2i.py", f"{TRAIN} --vocab-size 20", "codes", "0..19",
         "--vocab-size"),
    case("a bad id in a later code file (the run folder is removed)", "train_c2i.py",
         f"{TRAIN} --code-path {{w}}/codes_late", "codes_late/2/3.npy", "0..31"),
    case("labels past the classes", "train_c2i.py", f"{TRAIN} --num-classes 2", "class 2", "--num-classes"),
    case("codes of another grid", "train_c2i.py", f"{TRAIN} --image-size 128", "16 tokens", "--image-size 128"),
    case("dataset smaller than a batch", "train_c2i.py", f"{TRAIN} --global-batch-size 64", "smaller than one global batch"),
    case("missing code folder", "train_c2i.py", f"{TRAIN} --code-path {{w}}/no_codes", "no_codes", "not found"),
    case("corrupt resume checkpoint", "train_c2i.py", f"{TRAIN} --resume {{w}}/corrupt.pt", "corrupt.pt", "corrupt"),
    case("resume from a weights file (the run and results folders are removed)", "train_c2i.py",
         f"{TRAIN} --resume {{w}}/digits.pt", "digits.pt", "not one of our training checkpoints", "--gpt-ckpt"),
    case("float npz in [0, 1]", "evaluations.c2i.evaluator", EVAL.replace("sample.npz", "float01.npz"),
         "float01.npz", "float", "uint8", "multiply by 255"),
    case("npz that is not one", "evaluations.c2i.evaluator", EVAL.replace("sample.npz", "corrupt.npz"),
         "corrupt.npz", "not a readable .npz"),
    case("missing npz", "evaluations.c2i.evaluator", EVAL.replace("sample.npz", "nowhere.npz"), "nowhere.npz"),
    case("evaluator batch of zero", "evaluations.c2i.evaluator", f"{EVAL} --batch-size 0", "--batch-size", ">= 1"),
    case("digits judge of no samples", "evaluations.digits", "--gpt-ckpt {w}/digits.pt --num-samples 0",
         "--num-samples", ">= 2"),
    case("convert a folder that is not there", "scripts/convert_checkpoint.py", "{w}/no_ckpt {w}/out.pt",
         "no_ckpt", "no such checkpoint folder"),
    case("digits editing with zero steps", "scripts/eval_digits_editing.py", "--gpt-ckpt {w}/digits.pt --step 0",
         "--step", ">= 1"),
    case("bench batch sizes that are not numbers", "scripts/bench_train.py", "--batch-sizes 0,x", "--batch-sizes"),
    case("bench batch size of zero", "scripts/bench_sample.py", "--batch-sizes 0", "--batch-sizes", ">= 1"),
    case("sweep with a negative scale", "scripts.sweep_cfg", f"{SWEEP} --cfg-scales 1 -2", "--cfg-scales", ">= 0"),
    case("sweep of one sample", "scripts.sweep_cfg", f"{SWEEP} --num-samples 1", "--num-samples", ">= 2"),
    case("sweep with a missing reference batch", "scripts.sweep_cfg",
         f"{SWEEP} --ref-batch {{w}}/nowhere.npz --inception-weights {{w}}/inception.pth", "--ref-batch",
         "nowhere.npz", "not found"),
    case("sweep steps past the grid (after the model loads)", "scripts.sweep_cfg", f"{SWEEP} --step 65", "--step 65",
         "64"),
    case("argparse: a count that is not a number", "sample_c2i.py", f"{SAMPLE} --step abc", "--step", "invalid int"),
]
if not torch.cuda.is_available():
    CASES.append(case("--device cuda without a GPU", "sample_c2i.py", SAMPLE.replace("cpu", "cuda"), "--device cuda",
                      "no CUDA device"))
    CASES.append(case("evaluator --device cuda without a GPU", "evaluations.c2i.evaluator",
                      EVAL.replace("cpu", "cuda"), "--device cuda", "no CUDA device"))

# Real command lines (each a fresh Python that imports torch: seconds on a busy CPU): a script, the
# training entry and a module run with -m.
SUBPROCESS = {"corrupt .pt", "token ids past the vocabulary", "float npz in [0, 1]"}


def make_workspace(w: Path) -> None:
    """The files the cases read; none of them may change."""
    torch.manual_seed(0)
    digits = ARPG_models["ARPG-digits"]()
    torch.save({"model": digits.state_dict()}, w / "digits.pt")
    torch.save({"model": ARPG_models["ARPG-digits"](condition_vocab_size=2).state_dict()}, w / "controlled.pt")
    np.save(w / "shape.npy", np.zeros((8, 8), dtype=np.int64))
    for name, grid in (("shapes", 8), ("shapes_4x4", 4)):  # condition folders of 4 maps, classes 0 and 1
        for index in range(4):
            (w / name / str(index // 2)).mkdir(parents=True, exist_ok=True)
            np.save(w / name / str(index // 2) / f"{index}.npy", np.zeros((1, grid * grid), dtype=np.int64))
        write_condition_info(str(w / name), ConditionInfo("test", 2, grid))
    (w / "corrupt.pt").write_bytes(b"not a checkpoint" * 16)
    (w / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{truncated")
    np.save(w / "grid_5x5.npy", np.zeros((5, 5), dtype=np.int64))
    np.save(w / "grid_big_ids.npy", np.full((8, 8), 99, dtype=np.int64))
    Image.fromarray(np.zeros((8, 16), dtype=np.uint8)).save(w / "mask_wide.png")
    rng = np.random.default_rng(0)
    for label in range(3):  # ids 0..31 for --vocab-size 32, 16 tokens for --image-size 64
        (w / "codes" / str(label)).mkdir(parents=True)
        for index in range(4):
            np.save(w / "codes" / str(label) / f"{index}.npy", rng.integers(0, 32, (2, 16)).astype(np.int64))
    shutil.copytree(w / "codes", w / "codes_late")  # the first file is fine, the last is not
    np.save(w / "codes_late" / "2" / "3.npy", np.full((2, 16), 40, dtype=np.int64))
    (w / "images" / "n01").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(w / "images" / "n01" / "a.png")
    np.savez(w / "ref.npz", arr_0=rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8))
    np.savez(w / "sample.npz", arr_0=rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8))
    np.savez(w / "float01.npz", arr_0=rng.random((8, 8, 8, 3)).astype(np.float32))
    (w / "corrupt.npz").write_bytes(b"PK\x03\x04 not a zip")
    (w / "inception.pth").write_bytes(b"weights stand-in: no case gets as far as loading them")
    (w / "samples").mkdir()  # an existing sample folder must stay as it is
    (w / "samples" / "keep.png").write_bytes(b"an earlier run's image")


def snapshot(root: Path) -> dict:
    """Every file and folder under root: (size, mtime, sha1) of files, None for folders."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            state[os.path.join(folder, name)] = None
        for name in files:
            path = os.path.join(folder, name)
            stat = os.stat(path)
            state[path] = (stat.st_size, stat.st_mtime_ns, hashlib.sha1(Path(path).read_bytes()).hexdigest())
    return state


@pytest.fixture(autouse=True)
def loggers_as_they_were():
    """The entry scripts set up their loggers (rank 0 prints to the stdout that capsys swaps in, and stops
    propagating): give the tests after these the loggers as they found them."""
    def ours():
        return {name: logger for name, logger in logging.Logger.manager.loggerDict.items()
                if name.startswith("arpg") and isinstance(logger, logging.Logger)}

    before = {name: (logger.propagate, logger.level, list(logger.handlers)) for name, logger in ours().items()}
    yield
    for name, logger in ours().items():
        propagate, level, handlers = before.get(name, (True, logging.NOTSET, []))
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.propagate, logger.level, logger.handlers = propagate, level, handlers


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    w = tmp_path_factory.mktemp("bad_inputs")
    make_workspace(w)
    return w


def entry_function(entry: str):
    """The function `python <entry>` hands to run_main."""
    module = importlib.import_module(entry[:-len(".py")].replace("/", ".") if entry.endswith(".py") else entry)
    if hasattr(module, "get_args_parser"):
        return getattr(module, "cli", None) or (lambda argv: module.main(module.get_args_parser().parse_args(argv)))
    return module.main


def command_line(entry: str, argv):
    return [sys.executable, entry, *argv] if entry.endswith(".py") else [sys.executable, "-m", entry, *argv]


def check_message(stderr: str, words) -> None:
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert "error:" in last, stderr
    for word in words:
        assert word in stderr, f"{word!r} not in {stderr!r}"


@pytest.mark.parametrize("bad", [c for c in CASES if c.name not in SUBPROCESS], ids=lambda c: c.name)
def test_in_process(bad: Case, workspace, capsys, monkeypatch):
    monkeypatch.delenv("ARPG_DEBUG", raising=False)
    argv = [arg.replace("{w}", str(workspace)) for arg in bad.argv]
    before = snapshot(workspace)
    with pytest.raises(SystemExit) as done:
        run_main(entry_function(bad.entry), argv)
    assert done.value.code == bad.exit_code
    check_message(capsys.readouterr().err, bad.words)
    assert snapshot(workspace) == before


def test_real_command_lines(workspace):
    """The SUBPROCESS cases as a user types them, all started at once."""
    cases = [c for c in CASES if c.name in SUBPROCESS]
    assert len(cases) == len(SUBPROCESS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("ARPG_DEBUG", None)
    before = snapshot(workspace)
    running = [(c, subprocess.Popen(command_line(c.entry, [a.replace("{w}", str(workspace)) for a in c.argv]),
                                    cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
               for c in cases]
    for bad, process in running:
        _, stderr = process.communicate(timeout=240)
        assert process.returncode == bad.exit_code, (bad.name, stderr)
        check_message(stderr, bad.words)
    assert snapshot(workspace) == before


def test_there_are_at_least_25_cases():
    assert len(CASES) >= 25 and len({c.name for c in CASES}) == len(CASES)


def test_arpg_debug_shows_the_traceback(workspace, monkeypatch):
    monkeypatch.setenv("ARPG_DEBUG", "1")
    with pytest.raises(UserError, match="--cfg-scale"):
        run_main(entry_function("sample_c2i.py"), f"--gpt-ckpt {workspace}/digits.pt --cfg-scale -2".split())


def test_programming_errors_keep_their_traceback():
    def buggy(argv):
        return {}["missing"]

    with pytest.raises(KeyError):
        run_main(buggy, [])


class RefusingDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise UserError("code file a.npy holds token ids 0..40")


def test_an_error_from_a_data_loader_worker_keeps_its_one_line():
    """A worker's error comes back with the worker's traceback folded into its message; the line printed
    is the original message."""
    with pytest.raises(UserError) as raised:
        next(iter(torch.utils.data.DataLoader(RefusingDataset(), num_workers=1)))
    assert "Original Traceback" in str(raised.value)
    assert user_message(raised.value) == "code file a.npy holds token ids 0..40"


def test_a_guidance_scale_of_zero_is_allowed_and_below_zero_refused():
    from autoregressive.sampling import SamplingConfig

    SamplingConfig(cfg_scale=0.0)  # the "no class" prediction alone, as scripts/eval_digits_editing.py uses
    with pytest.raises(UserError, match=r"cfg_scale must be >= 0 \(--cfg-scale\), got -0.5"):
        SamplingConfig(cfg_scale=-0.5)


def test_file_checks_leave_hub_names_to_the_hub_loader(tmp_path):
    check_file("--gpt-ckpt", "hf://owner/repo/arpg_300m.pt")  # fetched (and checked) by the hub loader
    with pytest.raises(InputNotFound, match="--gpt-ckpt .*arpg_300m.pt: not found"):
        check_file("--gpt-ckpt", str(tmp_path / "arpg_300m.pt"))


def test_mask_of_another_aspect_is_refused(workspace):
    from autoregressive.editing import mask_from_png

    with pytest.raises(UserError, match="mask_wide.png is 16x8"):
        mask_from_png(str(workspace / "mask_wide.png"), 8)


def test_output_folder_is_removed_only_if_a_failed_run_left_it_empty(tmp_path):
    from autoregressive.utils.files import output_folder

    with pytest.raises(RuntimeError):
        with output_folder(str(tmp_path / "new" / "run")):
            raise RuntimeError("sampling failed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError):
        with output_folder(str(tmp_path / "new" / "run")) as folder:
            Path(folder, "000000.png").write_bytes(b"a finished image")
            raise RuntimeError("sampling failed later")
    assert (tmp_path / "new" / "run" / "000000.png").exists()
