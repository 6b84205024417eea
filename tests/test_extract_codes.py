import numpy as np
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from dataset.build import build_dataset
from dataset.transforms import center_crop_adm
from extract_codes_c2i import extract
from test_vq_model import tiny_vq


def make_folder(root, sizes=((40, 30), (20, 50), (33, 33))):
    rng = np.random.default_rng(0)
    for label, synset in enumerate(("n001", "n002")):
        (root / synset).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / synset / f"{i}.png")
    return ImageFolder(str(root))


def test_center_crop_is_square_of_the_requested_size():
    assert center_crop_adm(Image.new("RGB", (300, 200)), 64).size == (64, 64)
    assert center_crop_adm(Image.new("RGB", (20, 50)), 16).size == (16, 16)


def test_extraction_writes_codes_and_flips_and_resumes(tmp_path):
    folder = make_folder(tmp_path / "images")
    vq = tiny_vq()  # downsample 4: a 16x16 crop gives 16 codes
    assert extract(vq, folder, str(tmp_path / "codes"), 0, 2, "cpu", 16) == 3  # rank 0 of 2: images 0, 2, 4
    assert extract(vq, folder, str(tmp_path / "codes"), 1, 2, "cpu", 16) == 3
    codes = np.load(tmp_path / "codes" / "1" / "4.npy")
    assert codes.shape == (2, 16) and codes.dtype == np.int64
    image = center_crop_adm(Image.open(folder.samples[4][0]).convert("RGB"), 16)
    flipped = np.asarray(image.transpose(Image.FLIP_LEFT_RIGHT), dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1
    assert np.array_equal(codes[1], vq.encode_to_indices(torch.from_numpy(flipped)[None])[0].numpy())
    assert extract(vq, folder, str(tmp_path / "codes"), 0, 1, "cpu", 16) == 0  # everything exists: skipped
    data = build_dataset("imagenet_code", str(tmp_path / "codes"))
    assert len(data) == 6 and data[0][0].shape == (16,)


def test_ten_crop_gives_ten_views(tmp_path):
    folder = make_folder(tmp_path / "images", sizes=((40, 30),))
    extract(tiny_vq(), folder, str(tmp_path / "codes"), 0, 1, "cpu", 16, ten_crop=True)
    assert np.load(tmp_path / "codes" / "0" / "0.npy").shape == (10, 16)
