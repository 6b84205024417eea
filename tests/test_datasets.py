import numpy as np
import pytest
import torch

from dataset.build import build_dataset
from dataset.codes import FolderCodes, augmentation_index
from dataset.digits import DIGITS_NUM_CLASSES, load_digits_split, write_digits


def make_folder(root, per_class=4, augs=2, tokens=16):
    rng = np.random.default_rng(0)
    for label in (0, 1, 10):
        (root / str(label)).mkdir(parents=True)
        for i in range(per_class):
            np.save(root / str(label) / f"{i}.npy", rng.integers(0, 100, (augs, tokens)))
    return root


def test_folder_layout_reads_codes_labels_and_one_augmentation(tmp_path):
    data = FolderCodes(str(make_folder(tmp_path / "codes")), seed=3)
    assert len(data) == 12
    labels = sorted({int(data[i][1]) for i in range(len(data))})
    assert labels == [0, 1, 10]
    codes, label = data[5]
    path, _ = data.files[5]
    stored = np.load(path)
    row = augmentation_index(3, 0, 5, 2)
    assert codes.dtype == torch.long and torch.equal(codes, torch.from_numpy(stored[row]))


def test_augmentation_pick_depends_on_seed_epoch_index_only():
    picks = [augmentation_index(0, 0, i, 2) for i in range(64)]
    assert picks == [augmentation_index(0, 0, i, 2) for i in range(64)]
    assert picks != [augmentation_index(0, 1, i, 2) for i in range(64)]
    assert set(picks) == {0, 1}


def test_llamagen_layout_picks_one_augmentation_whatever_the_folder_name(tmp_path):
    root = tmp_path / "imagenet_code_c2i_no_f_l_i_p"
    (root / "imagenet256_codes").mkdir(parents=True)
    (root / "imagenet256_labels").mkdir()
    for i in range(3):
        np.save(root / "imagenet256_codes" / f"{i}.npy", np.arange(10 * 16).reshape(1, 10, 16) + i)
        np.save(root / "imagenet256_labels" / f"{i}.npy", np.array([i + 5]))
    data = build_dataset("llamagen_code", str(root), seed=0)
    codes, label = data[2]
    assert codes.shape == (16,) and int(label) == 7
    assert int(codes[0] - 2) % 16 == 0  # one of the ten rows of file 2


def test_bad_folders_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="--code-path"):
        FolderCodes(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .npy"):
        FolderCodes(str(tmp_path / "empty"))
    (tmp_path / "named" / "n01440764").mkdir(parents=True)
    with pytest.raises(ValueError, match="not a class number"):
        FolderCodes(str(tmp_path / "named"))
    bad = make_folder(tmp_path / "bad")
    (bad / "1" / "2.npy").write_bytes(b"garbage")
    data = FolderCodes(str(bad))
    index = [i for i, (path, _) in enumerate(data.files) if path.endswith("1/2.npy")][0]
    with pytest.raises(ValueError, match="1/2.npy"):
        data[index]
    np.save(bad / "0" / "1.npy", np.zeros((2, 9), dtype=np.int64))
    with pytest.raises(ValueError, match="9 tokens"):
        data[1]
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("imagenet", str(bad))


def test_digits_split_is_stratified_and_written_in_the_folder_layout(tmp_path):
    train_images, train_labels = load_digits_split("train")
    val_images, val_labels = load_digits_split("val")
    assert len(train_labels) == 1437 and len(val_labels) == 360
    assert train_images.min() >= 0 and train_images.max() == 16
    assert np.all(np.abs(np.bincount(val_labels) / 360 - np.bincount(train_labels) / 1437) < 0.01)
    train_dir, val_dir = write_digits(str(tmp_path))
    data = build_dataset("digits", train_dir)
    assert len(data) == 1437 and data.num_tokens == 64
    assert sorted({int(label) for _, label in data.files}) == list(range(DIGITS_NUM_CLASSES))
    write_digits(str(tmp_path))  # rewriting is harmless
    assert len(build_dataset("digits", val_dir)) == 360
