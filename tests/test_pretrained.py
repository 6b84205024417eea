"""Weights by name through huggingface_hub, offline: a Hub cache laid out by the test (models--owner--name/
snapshots/<commit>/file, refs/main), read by the real huggingface_hub code with HF_HUB_OFFLINE=1."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from huggingface_hub import constants

from autoregressive import pretrained
from autoregressive.models.arpg import ARPG_models
from autoregressive.pretrained import ARPGPipeline, HubFile, from_pretrained, with_checkpoints_fetched
from sample_c2i import get_args_parser
from tokenizer.vq_model import VQ_models

ROOT = Path(__file__).resolve().parents[1]
MAIN, OLD = "a" * 40, "b" * 40  # commits: refs/main points at MAIN; OLD is reachable by its hash only


def put_in_cache(cache: Path, repo_id: str, filename: str, payload, commit: str = MAIN, is_main: bool = True):
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    path = repo / "snapshots" / commit / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    if is_main:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    return path


def digits_state(seed: int):
    torch.manual_seed(seed)
    return ARPG_models["ARPG-digits"]().state_dict()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An offline Hub cache holding digits weights at two commits; the released table knows ARPG-digits."""
    cache = tmp_path / "hub"
    put_in_cache(cache, "test-owner/digits", "digits.pt", {"model": digits_state(1)})
    put_in_cache(cache, "test-owner/digits", "digits.pt", {"model": digits_state(2)}, commit=OLD, is_main=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setitem(pretrained.RELEASED, "ARPG-digits", HubFile("test-owner/digits", "digits.pt"))
    return cache


def same_weights(model, state) -> bool:
    return all(torch.equal(model.state_dict()[key], value) for key, value in state.items())


def test_released_table_names_the_official_files():
    assert {name: (f.repo_id, f.filename) for name, f in pretrained.RELEASED.items()} == {
        "ARPG-L": ("hp-l33/ARPG", "arpg_300m.pt"), "ARPG-XL": ("hp-l33/ARPG", "arpg_700m.pt"),
        "ARPG-XXL": ("hp-l33/ARPG", "arpg_1b.pt"), "VQ-16": ("FoundationVision/LlamaGen", "vq_ds16_c2i.pt")}
    assert set(pretrained.RELEASED) - set(pretrained.TOKENIZERS) <= set(ARPG_models)
    assert set(pretrained.TOKENIZERS) <= set(VQ_models)


def test_from_pretrained_loads_the_cached_file_strictly_at_a_revision(hub):
    model = from_pretrained("ARPG-digits")
    assert not model.training and same_weights(model, digits_state(1))
    assert same_weights(from_pretrained("ARPG-digits", revision=OLD), digits_state(2))
    put_in_cache(hub, "test-owner/digits", "digits.pt", {"model": ARPG_models["ARPG-tiny"]().state_dict()})
    with pytest.raises(ValueError, match="does not fit"):  # the strict loading of local files
        from_pretrained("ARPG-digits")


def test_from_pretrained_refuses_unknown_names():
    with pytest.raises(ValueError, match="ARPG-L, ARPG-XL, ARPG-XXL, VQ-16"):
        from_pretrained("ARPG-M")


def test_missing_file_offline_says_what_to_download_and_where(hub):
    with pytest.raises(FileNotFoundError) as error:
        from_pretrained("ARPG-L")
    message = str(error.value)
    assert "\n" not in message
    assert "https://huggingface.co/hp-l33/ARPG/resolve/main/arpg_300m.pt" in message
    assert "hf download hp-l33/ARPG arpg_300m.pt" in message and str(hub) in message
    with pytest.raises(FileNotFoundError, match=f"test-owner/digits/digits.pt@{'c' * 40} is not in"):
        from_pretrained("ARPG-digits", revision="c" * 40)


def parse(*argv):
    return get_args_parser().parse_args(list(argv))


def test_script_checkpoint_flags_resolve_hub_paths_and_model_defaults(hub, tmp_path):
    main_file = str(hub / "models--test-owner--digits" / "snapshots" / MAIN / "digits.pt")
    old_file = main_file.replace(MAIN, OLD)
    fetched = with_checkpoints_fetched(parse("--gpt-model", "ARPG-digits", "--gpt-ckpt",
                                             "hf://test-owner/digits/digits.pt"))
    assert (fetched.gpt_ckpt, fetched.vq_ckpt) == (main_file, None)  # a model of no released VQ size
    fetched = with_checkpoints_fetched(parse("--gpt-model", "ARPG-digits", "--gpt-ckpt",
                                             f"hf://test-owner/digits/digits.pt@{OLD}"))
    assert fetched.gpt_ckpt == old_file
    assert with_checkpoints_fetched(parse("--gpt-model", "ARPG-digits")).gpt_ckpt == main_file  # by model name
    local = str(tmp_path / "mine.pt")
    assert with_checkpoints_fetched(parse("--gpt-model", "ARPG-digits", "--gpt-ckpt", local)).gpt_ckpt == local
    with pytest.raises(ValueError, match="--gpt-ckpt is required: ARPG-tiny has no released weights"):
        with_checkpoints_fetched(parse("--gpt-model", "ARPG-tiny"))
    with pytest.raises(ValueError, match="hf://owner/repo/file"):
        with_checkpoints_fetched(parse("--gpt-ckpt", "hf://digits.pt"))


def test_released_sizes_fetch_the_tokenizer_when_vq_ckpt_is_omitted(hub, tmp_path):
    vq_file = put_in_cache(hub, "FoundationVision/LlamaGen", "vq_ds16_c2i.pt", {"model": {}})
    gpt = str(tmp_path / "own_arpg_l.pt")
    assert with_checkpoints_fetched(parse("--gpt-model", "ARPG-L", "--gpt-ckpt", gpt)).vq_ckpt == str(vq_file)
    assert with_checkpoints_fetched(parse("--gpt-ckpt", gpt, "--vq-ckpt", "vq.pt")).vq_ckpt == "vq.pt"


def test_sample_script_reads_the_cache_with_hf_hub_offline(hub, tmp_path):
    """The real environment variables, in a fresh process: --gpt-ckpt hf://... loads; a missing file fails
    with the one-line message."""
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(ROOT / "sample_c2i.py"), "--gpt-model", "ARPG-digits", "--class-labels", "3",
               "--step", "4", "--device", "cpu", "--out", str(tmp_path / "grid.png")]
    done = subprocess.run([*command, "--gpt-ckpt", "hf://test-owner/digits/digits.pt"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "grid.png").is_file()
    failed = subprocess.run([*command, "--gpt-ckpt", "hf://hp-l33/ARPG/arpg_300m.pt"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0
    assert "hp-l33/ARPG/arpg_300m.pt is not in the Hugging Face cache" in failed.stderr.strip().splitlines()[-1]


def test_pipeline_samples_images_from_cached_weights(hub, monkeypatch):
    torch.manual_seed(0)
    put_in_cache(hub, "test-owner/tiny", "tiny.pt", {"model": ARPG_models["ARPG-tiny"]().state_dict()})
    put_in_cache(hub, "FoundationVision/LlamaGen", "vq_ds16_c2i.pt", {"model": VQ_models["VQ-16"]().state_dict()})
    monkeypatch.setitem(pretrained.RELEASED, "ARPG-tiny", HubFile("test-owner/tiny", "tiny.pt"))
    pipe = ARPGPipeline.from_pretrained("ARPG-tiny")
    images = pipe.sample([2], num_steps=4, cfg_scale=2.0)  # one image: the VQ decoder is most of the CPU time
    assert images.shape == (1, 3, 256, 256) and 0 <= images.min() and images.max() <= 1
    decoded = []  # seeded: the same tokens reach the decoder again (read there, not decoded twice on the CPU)
    monkeypatch.setattr(pretrained, "tokens_to_images",
                        lambda tokens, *_: decoded.append(tokens) or torch.zeros(1, 256, 256, 3, dtype=torch.uint8))
    for seed in (0, 0, 1):
        pipe.sample([2], seed=seed, num_steps=4, cfg_scale=2.0)
    assert torch.equal(decoded[0], decoded[1]) and not torch.equal(decoded[0], decoded[2])
    with pytest.raises(ValueError, match="out of range"):
        pipe.sample([1000])


def test_the_quick_start_of_the_readme_runs(hub, monkeypatch, tmp_path):
    from test_readme import marked_block
    block = marked_block("quick-start")
    torch.manual_seed(0)
    put_in_cache(hub, "test-owner/tiny", "tiny.pt", {"model": ARPG_models["ARPG-tiny"]().state_dict()})
    put_in_cache(hub, "FoundationVision/LlamaGen", "vq_ds16_c2i.pt", {"model": VQ_models["VQ-16"]().state_dict()})
    monkeypatch.setitem(pretrained.RELEASED, "ARPG-tiny", HubFile("test-owner/tiny", "tiny.pt"))
    replacements = {'"ARPG-XL"': '"ARPG-tiny"', 'device="cuda"': 'device="cpu"', "seed=0)": "seed=0, num_steps=4)",
                    "[207, 360, 388, 113, 355, 980, 323, 979]": "[207]",  # one image: the VQ decoder's CPU time
                    '"samples.png"': repr(str(tmp_path / "samples.png"))}
    for old, new in replacements.items():
        assert old in block, old
        block = block.replace(old, new)
    scope = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert scope["images"].shape == (1, 3, 256, 256) and (tmp_path / "samples.png").is_file()


def test_ddp_sampler_fetches_by_hub_path_and_names_its_folder_after_the_file(hub, tmp_path):
    from sample_c2i_ddp import get_args_parser as ddp_parser, main

    main(ddp_parser().parse_args(["--gpt-model", "ARPG-digits", "--gpt-ckpt", "hf://test-owner/digits/digits.pt",
                                  "--sample-dir", str(tmp_path / "s"), "--num-fid-samples", "4", "--step", "4",
                                  "--per-proc-batch-size", "4", "--precision", "none", "--device", "cpu"]))
    [npz] = (tmp_path / "s").glob("*.npz")
    assert npz.name.startswith("ARPG-digits-digits-size-8-")
