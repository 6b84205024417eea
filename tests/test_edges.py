"""Canny edge condition maps (dataset/edges.py) and their extraction beside the codes."""
import numpy as np
import torch
from PIL import Image

from dataset.build import build_dataset
from dataset.codes import augmentation_index
from dataset.conditions import ConditionInfo, write_condition_info
from dataset.edges import EDGE_VOCAB_SIZE, canny, edge_tokens, image_edge_tokens
from dataset.transforms import center_crop_adm
from extract_codes_c2i import extract as extract_codes
from extract_conditions_c2i import extract as extract_conditions
from test_extract_codes import make_folder
from test_vq_model import tiny_vq


def test_canny_finds_the_outline_of_a_square_and_nothing_on_flat_ground():
    image = np.zeros((32, 32))
    image[8:24, 8:24] = 1.0
    edges = canny(image)
    rows, cols = np.nonzero(edges)
    distance_to_outline = np.minimum(np.minimum(abs(rows - 7.5), abs(rows - 23.5)), np.minimum(abs(cols - 7.5), abs(cols - 23.5)))
    assert edges.sum() > 4 * 12 and distance_to_outline.max() <= 2.5  # a thin outline, no blobs
    assert not edges[12:20, 12:20].any() and not edges[:3].any()
    assert not canny(np.full((32, 32), 0.5)).any()
    assert not canny(image * 0.2).any()  # a step below the low threshold is no edge


def test_edge_tokens_are_the_bits_of_2x2_cells_per_token():
    edges = np.zeros((8, 8), dtype=bool)
    edges[0, 4] = True  # token (0, 1), top-left cell
    edges[3, 0] = True  # token (0, 0), bottom-left cell
    edges[7, 7] = True  # token (1, 1), bottom-right cell
    edges[5, 2] = edges[4, 1] = True  # token (1, 0), both top cells
    assert edge_tokens(edges, 2).tolist() == [4, 1, 1 | 2, 8]
    assert edge_tokens(np.ones((16, 16), dtype=bool), 4).tolist() == [EDGE_VOCAB_SIZE - 1] * 16


def test_edge_maps_are_written_beside_the_codes_view_by_view(tmp_path):
    folder = make_folder(tmp_path / "images")
    extract_codes(tiny_vq(), folder, str(tmp_path / "codes"), 0, 1, "cpu", 16)  # 4x4 codes per view
    conditions = tmp_path / "codes_canny"
    assert extract_conditions(folder, str(conditions), 0, 2, 16, 4) == 3  # rank 0 of 2
    assert extract_conditions(folder, str(conditions), 1, 2, 16, 4) == 3
    assert extract_conditions(folder, str(conditions), 0, 1, 16, 4) == 0  # all there: skipped
    maps = np.load(conditions / "1" / "4.npy")
    crop = center_crop_adm(Image.open(folder.samples[4][0]).convert("RGB"), 16)
    assert maps.shape == (2, 16) and maps.dtype == np.int64
    assert np.array_equal(maps[0], image_edge_tokens(crop, 4))
    assert np.array_equal(maps[1], image_edge_tokens(crop.transpose(Image.FLIP_LEFT_RIGHT), 4))
    write_condition_info(str(conditions), ConditionInfo("canny-edges", EDGE_VOCAB_SIZE, 4))  # as main() does
    data = build_dataset("imagenet_code", str(tmp_path / "codes"), condition_path=str(conditions))
    tokens, label, condition_map = data[5]
    row = augmentation_index(0, 0, 5, 2)
    assert torch.equal(tokens, torch.from_numpy(np.load(tmp_path / "codes" / "1" / "5.npy")[row]))
    assert torch.equal(condition_map, torch.from_numpy(np.load(conditions / "1" / "5.npy")[row]))
