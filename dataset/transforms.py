"""Image preprocessing shared by code extraction and editing."""
import numpy as np
from PIL import Image


def center_crop_adm(image: Image.Image, size: int) -> Image.Image:
    """ADM's centre crop: halve with BOX filtering while the short side is >= 2 * size, resize the short
    side to size with BICUBIC, then crop the centre size x size."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)
    pixels = np.asarray(image.convert("RGB"))
    top, left = (pixels.shape[0] - size) // 2, (pixels.shape[1] - size) // 2
    return Image.fromarray(pixels[top:top + size, left:left + size])


def to_model_input(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1]."""
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
