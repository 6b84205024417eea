import torch

from autoregressive.render import DIGITS_VIEW_SCALE, tokens_to_images, tokens_to_view


def test_digit_tokens_are_grey_levels_enlarged_for_viewing():
    tokens = torch.tensor([[0, 16, 8, 4]])
    images = tokens_to_images(tokens, 2, vq=None, vocab_size=17)
    assert images.shape == (1, 2, 2, 3) and images[0, 0, 0].tolist() == [0] * 3 and images[0, 0, 1].tolist() == [255] * 3
    view = tokens_to_view(tokens, 2, vq=None, vocab_size=17)
    assert view.shape == (1, 3, 2 * DIGITS_VIEW_SCALE, 2 * DIGITS_VIEW_SCALE)
    block = view[0, :, :DIGITS_VIEW_SCALE, DIGITS_VIEW_SCALE:]  # token (0, 1), one flat square
    assert torch.all(block == 1.0)
    assert torch.equal(view[0, :, ::DIGITS_VIEW_SCALE, ::DIGITS_VIEW_SCALE], images[0].permute(2, 0, 1).float() / 255)
