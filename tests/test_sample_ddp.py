"""sample_c2i_ddp.py on CPU with a tiny random digits model: npz layout, resume, process count."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from autoregressive.models.arpg import ARPG_models
from autoregressive.render import tokens_to_images
from conftest import free_port
from sample_c2i_ddp import get_args_parser, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def digits_ckpt(tmp_path):
    torch.manual_seed(0)
    model = ARPG_models["ARPG-digits"]()
    torch.nn.init.normal_(model.head.weight, std=0.5)
    path = tmp_path / "digits.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


def flags(ckpt, out, num=26, extra=()):
    return ["--gpt-model", "ARPG-digits", "--gpt-ckpt", str(ckpt), "--sample-dir", str(out), "--num-fid-samples",
            str(num), "--per-proc-batch-size", "4", "--step", "8", "--cfg-scale", "2.0", "--precision", "none",
            "--device", "cpu", *extra]


def run_inline(argv):
    main(get_args_parser().parse_args(argv))


def the_npz(out: Path):
    [path] = out.glob("*.npz")
    with np.load(path) as data:
        return data["arr_0"], data["labels"]


def test_npz_shape_dtype_and_label_balance(digits_ckpt, tmp_path):
    run_inline(flags(digits_ckpt, tmp_path / "s", num=30))
    arr, labels = the_npz(tmp_path / "s")
    assert arr.shape == (30, 8, 8, 3) and arr.dtype == np.uint8
    assert labels.tolist() == [i % 10 for i in range(30)]
    assert np.all(arr[..., 0] == arr[..., 2])  # grey levels rendered to 3 channels


def test_a_run_killed_midway_resumes_to_the_same_npz(digits_ckpt, tmp_path):
    run_inline(flags(digits_ckpt, tmp_path / "full"))
    reference, _ = the_npz(tmp_path / "full")
    run_inline(flags(digits_ckpt, tmp_path / "partial"))
    [folder] = [p for p in (tmp_path / "partial").iterdir() if p.is_dir()]
    for name in ("000009.png", "000010.png", "000021.png"):  # as if the run died before these batches
        (folder / name).unlink()
    (folder.parent / f"{folder.name}.npz").unlink()
    (folder / "000001.png").write_bytes((folder / "000001.png").read_bytes())  # finished files stay
    (folder / "000009.tmp4242.png").write_bytes(b"half a PNG")  # a write that SIGKILL cut short
    run_inline(flags(digits_ckpt, tmp_path / "partial"))
    resumed, _ = the_npz(tmp_path / "partial")
    assert np.array_equal(reference, resumed)
    assert sorted(path.name for path in folder.iterdir()) == [f"{i:06d}.png" for i in range(26)]


def test_two_gloo_processes_give_the_images_of_one(digits_ckpt, tmp_path):
    run_inline(flags(digits_ckpt, tmp_path / "one"))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               str(ROOT / "sample_c2i_ddp.py"), *flags(digits_ckpt, tmp_path / "two")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert np.array_equal(the_npz(tmp_path / "one")[0], the_npz(tmp_path / "two")[0])


def test_bad_inputs_are_explained(digits_ckpt, tmp_path):
    tiny = tmp_path / "tiny.pt"
    torch.save({"model": ARPG_models["ARPG-tiny"]().state_dict()}, tiny)
    with pytest.raises(ValueError, match="does not fit"):
        run_inline(flags(tiny, tmp_path / "x"))
    with pytest.raises(ValueError, match="NaN"):
        tokens_to_images(torch.zeros(1, 4, dtype=torch.long), 2, vq=NaNDecoder(), vocab_size=17)
    with pytest.raises(ValueError, match="--concurrent-batches must be >= 1, got 0"):
        run_inline(flags(digits_ckpt, tmp_path / "x", extra=("--concurrent-batches", "0")))


class NaNDecoder:
    class config:
        codebook_embed_dim = 8

    @staticmethod
    def decode_code(tokens, shape):
        return torch.full((tokens.shape[0], 3, 32, 32), float("nan"))


def test_vq_decodes_in_float32_unless_asked(tmp_path):
    """The official command decodes in float32 (the official scripts' dtype) with the decoder compiled on
    CUDA; --vq-precision picks another dtype without touching the GPT's --precision."""
    from autoregressive.weights import PRECISIONS, load_vq
    from tokenizer.vq_model import VQ_models

    official = ["--gpt-model", "ARPG-L", "--gpt-ckpt", "arpg_300m.pt", "--vq-ckpt", "vq_ds16_c2i.pt",
                "--sample-schedule", "arccos", "--cfg-scale", "5.0", "--step", "64"]
    args = get_args_parser().parse_args(official)
    assert (args.precision, args.vq_precision, args.compile_vq) == ("bf16", "none", True)
    args = get_args_parser().parse_args(official + ["--vq-precision", "fp16", "--no-compile-vq"])
    assert (args.vq_precision, args.compile_vq) == ("fp16", False)

    path = tmp_path / "vq.pt"
    torch.save({"model": VQ_models["VQ-16"]().state_dict()}, path)
    vq = load_vq("VQ-16", str(path), "cpu", compile_decoder=True)  # no compile on the CPU
    assert vq.decoder.conv_in.weight.dtype == torch.float32 and not vq.training
    assert vq.decoder.conv_in.weight.is_contiguous()
    half = load_vq("VQ-16", str(path), "cpu", PRECISIONS["fp16"])
    assert half.decoder.conv_in.weight.dtype == torch.float16


def test_a_failed_png_write_stops_the_run(digits_ckpt, tmp_path, monkeypatch):
    """PNGs are written while the next batch samples: an error in the last batch's writes still ends
    the run with that error, and no npz is packed from a partial folder."""
    import sample_c2i_ddp

    real_save = sample_c2i_ddp.save_png_atomic

    def save(image, path):
        if path.endswith("000025.png"):  # in the last batch (26 images, batches of 4)
            raise OSError("disk full")
        real_save(image, path)

    monkeypatch.setattr(sample_c2i_ddp, "save_png_atomic", save)
    with pytest.raises(OSError, match="disk full"):
        run_inline(flags(digits_ckpt, tmp_path / "s"))
    assert not list((tmp_path / "s").glob("*.npz"))
    [folder] = [p for p in (tmp_path / "s").iterdir() if p.is_dir()]
    assert len(list(folder.glob("*.png"))) == 25
    # a batch file is written after its batch's last PNG: the unfinished last batch has none
    assert sorted(path.name for path in folder.glob("*.npy")) == [f"batch-{i:06d}-{i + 4:06d}.npy" for i in range(0, 24, 4)]


def test_a_png_run_packs_from_its_batch_files_and_leaves_only_the_pngs(digits_ckpt, tmp_path, monkeypatch):
    """Each batch's pixels also go to a batch file once its PNGs are written; packing reads those (no PNG is
    decoded) and then removes them, so the folder ends in the official layout, PNGs equal to the npz."""
    import sample_c2i_ddp

    real_read = sample_c2i_ddp.read_png_rgb
    monkeypatch.setattr(sample_c2i_ddp, "read_png_rgb", lambda path: pytest.fail(f"packing decoded {path}"))
    run_inline(flags(digits_ckpt, tmp_path / "s", num=10))
    arr, _ = the_npz(tmp_path / "s")
    [folder] = [p for p in (tmp_path / "s").iterdir() if p.is_dir()]
    assert sorted(path.name for path in folder.iterdir()) == [f"{i:06d}.png" for i in range(10)]
    assert all(np.array_equal(real_read(str(folder / f"{i:06d}.png")), arr[i]) for i in range(10))


def test_packing_refuses_a_folder_of_mixed_sizes(tmp_path):
    from PIL import Image

    from sample_c2i_ddp import pack_npz

    folder = tmp_path / "samples"
    folder.mkdir()
    for i, size in enumerate((8, 8, 16, 8)):
        Image.fromarray(np.full((size, size, 3), i, dtype=np.uint8)).save(folder / f"{i:06d}.png")
    with pytest.raises(ValueError, match="several sizes.*000002.png"):
        pack_npz(str(folder), np.arange(4) % 10)
    assert not (tmp_path / "samples.npz").exists()
    (folder / "000002.png").unlink()
    Image.fromarray(np.full((8, 8, 3), 2, dtype=np.uint8)).save(folder / "000002.png")
    with np.load(pack_npz(str(folder), np.arange(4) % 3)) as data:
        assert data["arr_0"].shape == (4, 8, 8, 3) and data["arr_0"][:, 0, 0, 0].tolist() == [0, 1, 2, 3]
        assert data["labels"].tolist() == [0, 1, 2, 0]


def test_non_default_numerics_get_their_own_folder():
    """A run with other numerics must not resume into (and skip past) the PNGs of a default run; the
    default folder name stays the official one."""
    from sample_c2i_ddp import folder_name

    def name(*extra):
        args = get_args_parser().parse_args(["--gpt-model", "ARPG-L", "--gpt-ckpt", "arpg_300m.pt", *extra])
        return folder_name(args, 256, 256)

    default = name()
    assert default.endswith("-step-256-seed-0") and default.startswith("ARPG-L-arpg_300m-size-256-size-256-")
    assert len({default, name("--kv-cache", "fp8"), name("--precision", "fp16"),
                name("--precision", "fp16", "--kv-cache", "fp8")}) == 4


def test_batches_sampled_at_once_give_the_images_of_one_at_a_time(digits_ckpt, tmp_path):
    """--concurrent-batches: each batch on a sampler of its own (the CUDA default at batch 32 is 4; here on the CPU)."""
    import json

    run_inline(flags(digits_ckpt, tmp_path / "one", extra=("--no-png",)))
    timings = tmp_path / "timings.json"
    run_inline(flags(digits_ckpt, tmp_path / "three", extra=("--no-png", "--concurrent-batches", "3", "--timings",
                                                               str(timings))))
    assert np.array_equal(the_npz(tmp_path / "one")[0], the_npz(tmp_path / "three")[0])
    assert sorted(samples for _, samples in json.loads(timings.read_text())["written"]) == [2] + [4] * 6


@pytest.mark.parametrize("concurrent, advice", [
    (1, "out of GPU memory at --per-proc-batch-size 4: lower it"),
    (2, "out of GPU memory with 2 batches of 4 at once: pass --concurrent-batches 1 (the same images)")])
def test_a_batch_out_of_gpu_memory_says_what_to_do_and_keeps_the_pngs(digits_ckpt, tmp_path, monkeypatch, capsys,
                                                                      concurrent, advice):
    import sample_c2i_ddp
    from autoregressive.utils.cli import run_main

    real_make_sampler, calls = sample_c2i_ddp.make_sampler, []

    def sampler_out_of_memory_on_the_third_batch(model, **options):
        sample = real_make_sampler(model, **options)

        def run(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return sample(*args, **kwargs)
        return run

    monkeypatch.setattr(sample_c2i_ddp, "make_sampler", sampler_out_of_memory_on_the_third_batch)
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda argv: main(get_args_parser().parse_args(argv)),
                 flags(digits_ckpt, tmp_path / "out", extra=("--concurrent-batches", str(concurrent))))
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and stderr.rstrip().splitlines()[-1].startswith(f"error: {advice}")
    assert len(list((tmp_path / "out").glob("*/*.png"))) >= 4  # the first batches' PNGs stay


def test_without_pngs_the_npz_is_the_same_and_a_killed_run_resumes(digits_ckpt, tmp_path):
    """--no-png keeps each batch in one .npy file instead of PNGs: the packed arrays equal the PNG run's;
    a batch file lost with the process is sampled again; and a folder holding both PNGs and batch files
    (a run resumed with the other flag) packs the same arrays too."""
    import json

    run_inline(flags(digits_ckpt, tmp_path / "png"))
    reference, labels = the_npz(tmp_path / "png")
    timings = tmp_path / "timings.json"
    run_inline(flags(digits_ckpt, tmp_path / "npy", extra=("--no-png", "--timings", str(timings))))
    [folder] = [p for p in (tmp_path / "npy").iterdir() if p.is_dir()]
    names = sorted(path.name for path in folder.iterdir())
    assert names == [f"batch-{first:06d}-{min(first + 4, 26):06d}.npy" for first in range(0, 26, 4)]
    arr, npy_labels = the_npz(tmp_path / "npy")
    assert np.array_equal(arr, reference) and np.array_equal(npy_labels, labels)
    stages = json.loads(timings.read_text())
    assert {"model", "vq_decode", "write", "pack"} <= set(stages["seconds"])
    marks = stages["marks"]
    assert stages["launched"] == marks["imported"] <= marks["distributed"] <= marks["loaded"]
    assert marks["loaded"] <= marks["first_batch_sampled"] <= marks["sampled"]
    assert sorted(samples for _, samples in stages["written"]) == [2] + [4] * 6  # each batch once on disk

    (folder / "batch-000008-000012.npy").unlink()  # as if the run died before this batch was written
    (folder / "batch-000012-000016.tmp4242.npy").write_bytes(b"half a file")
    (folder.parent / f"{folder.name}.npz").unlink()
    run_inline(flags(digits_ckpt, tmp_path / "npy", extra=("--no-png",)))
    assert sorted(path.name for path in folder.iterdir()) == names
    assert np.array_equal(the_npz(tmp_path / "npy")[0], reference)

    (folder / "batch-000020-000024.npy").unlink()  # resumed with PNGs: that batch comes back as PNGs
    run_inline(flags(digits_ckpt, tmp_path / "npy"))
    assert sorted(path.name for path in folder.glob("*.png")) == [f"{i:06d}.png" for i in range(20, 24)]
    assert np.array_equal(the_npz(tmp_path / "npy")[0], reference)


def test_two_gloo_processes_without_pngs_give_the_images_of_one(digits_ckpt, tmp_path):
    run_inline(flags(digits_ckpt, tmp_path / "one"))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               str(ROOT / "sample_c2i_ddp.py"), *flags(digits_ckpt, tmp_path / "two", extra=("--no-png",))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert np.array_equal(the_npz(tmp_path / "one")[0], the_npz(tmp_path / "two")[0])


def test_a_non_finite_decoder_output_fails_the_batch_that_holds_it():
    """The finiteness check moved off the sampling thread: it is raised by the writer waiting for the images."""
    from autoregressive.image_output import PendingImages, StageClock

    render = lambda tokens: (torch.zeros(len(tokens), 2, 2, 3, dtype=torch.uint8), torch.tensor(False))
    with pytest.raises(ValueError, match="NaN or inf"):
        PendingImages(torch.zeros(2, 4, dtype=torch.long), render, StageClock()).wait()


def test_the_pngs_are_those_of_sampling_decoding_and_saving_one_batch_after_the_other(digits_ckpt, tmp_path):
    """The overlapped pipeline writes the PNG bytes of the plain sequence: the batch's tokens from the
    sampler, tokens_to_images, save_png_atomic."""
    from autoregressive.fast_generate import make_sampler
    from autoregressive.sampling import SamplingConfig, batch_generator
    from autoregressive.weights import load_gpt
    from sample_c2i_ddp import save_png_atomic

    argv = flags(digits_ckpt, tmp_path / "s", num=6)
    run_inline(argv)
    [folder] = [p for p in (tmp_path / "s").iterdir() if p.is_dir()]
    args = get_args_parser().parse_args(argv)
    model = load_gpt("ARPG-digits", str(digits_ckpt), "cpu", "none")
    sampler, grid = make_sampler(model), model.config.grid_size
    for first in (0, 4):
        indices = torch.arange(first, first + 4)
        tokens = sampler(indices % model.config.num_classes, SamplingConfig.from_args(args),
                         batch_generator("cpu", 0, first))
        images = tokens_to_images(tokens, grid, None, model.config.vocab_size).numpy()
        for row, index in enumerate(i for i in indices.tolist() if i < 6):
            save_png_atomic(images[row], str(tmp_path / "expected.png"))
            assert (folder / f"{index:06d}.png").read_bytes() == (tmp_path / "expected.png").read_bytes()


def test_an_error_of_the_decoder_thread_reaches_the_sampling_thread(tmp_path):
    """A batch the decoder fails on (out of memory, say) stops the run with that error, after the
    batches queued before it were written."""
    from autoregressive.image_output import DecoderThread, ImageWriter, StageClock
    from sample_c2i_ddp import save_png_atomic

    def render(tokens):
        if int(tokens[0, 0]) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return torch.zeros(len(tokens), 2, 2, 3, dtype=torch.uint8), torch.tensor(True)

    clock = StageClock()
    writer = ImageWriter(str(tmp_path), True, save_png_atomic, clock, workers=2)
    decoder = DecoderThread(render, writer, clock)
    decoder.put(0, 2, torch.zeros(2, 4, dtype=torch.long))
    decoder.put(2, 2, torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        decoder.close()
    writer.close()
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["000000.png", "000001.png"]


def test_the_fast_png_level_keeps_every_pixel_and_trades_only_file_size(tmp_path):
    """PNGs at zlib level 1 read back to the same pixels (lossless) and are smaller than raw pixels; at
    Pillow's default level the same image is a smaller file: the level trades size, never pixels."""
    from PIL import Image

    from sample_c2i_ddp import PNG_COMPRESS_LEVEL, read_png_rgb, save_png_atomic

    rows = np.linspace(0, 255, 64, dtype=np.uint8)
    image = np.stack([np.add.outer(rows, rows // 2), np.add.outer(rows // 3, rows), np.tile(rows, (64, 1))], -1)
    image = np.kron(image, np.ones((4, 4, 1), dtype=np.uint8))  # 256 x 256, smooth like a sample
    image[::7, ::5] ^= 0x5A  # and some detail
    save_png_atomic(image, str(tmp_path / "fast.png"))
    Image.fromarray(image).save(tmp_path / "default.png")
    assert PNG_COMPRESS_LEVEL == 1 and np.array_equal(read_png_rgb(str(tmp_path / "fast.png")), image)
    assert (tmp_path / "default.png").stat().st_size < (tmp_path / "fast.png").stat().st_size < image.nbytes
