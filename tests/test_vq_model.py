import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tokenizer.vq_model import VQConfig, VQModel, VQ_models

TINY = VQConfig(codebook_size=64, codebook_embed_dim=4, z_channels=16, base_channels=8, norm_groups=4,
                encoder_ch_mult=(1, 2, 2), decoder_ch_mult=(1, 2, 2), num_res_blocks=1)


def tiny_vq(seed=0):
    torch.manual_seed(seed)
    vq = VQModel(TINY).eval()
    for p in vq.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return vq


def test_state_dict_matches_llamagen_manifest():
    expected = json.loads((Path(__file__).parent / "manifests" / "vq16.json").read_text())["state_dict"]
    with torch.device("meta"):
        vq = VQ_models["VQ-16"]()
    assert {k: list(v.shape) for k, v in vq.state_dict().items()} == expected
    assert vq.config.downsample == 16


def test_encode_is_the_nearest_normalised_codebook_row():
    vq = tiny_vq()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    codes = vq.encode_to_indices(images)
    assert codes.shape == (2, 16) and codes.dtype == torch.long  # 16x16 pixels / 4 -> 4x4 codes
    with torch.no_grad():
        z = vq.quant_conv(vq.encoder(images)).permute(0, 2, 3, 1).reshape(-1, 4)
    similarity = F.normalize(z, dim=-1) @ F.normalize(vq.quantize.embedding.weight, dim=-1).t()
    assert torch.equal(codes.view(-1), similarity.argmax(dim=1))


def test_decode_code_reads_codes_in_raster_order():
    vq = tiny_vq()
    codes = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        images = vq.decode_code(codes, shape=(2, 4, 4, 4))
        rows = F.normalize(vq.quantize.embedding.weight, dim=-1)[codes]  # (2, 16, 4)
        direct = vq.decode(rows.view(2, 4, 4, 4).permute(0, 3, 1, 2))
    assert images.shape == (2, 3, 16, 16)
    assert torch.allclose(images, direct, atol=1e-5)
    assert torch.allclose(vq.decode_code(codes), images, atol=1e-5)  # square grid by default
    with pytest.raises(ValueError, match="does not hold"):
        vq.decode_code(codes, shape=(2, 4, 2, 4))


def test_strict_load_round_trip_and_bf16_decode():
    state = tiny_vq(1).state_dict()
    fresh = VQModel(TINY)
    fresh.load_state_dict(state, strict=True)
    del state["quantize.codebook_used"]
    with pytest.raises(RuntimeError, match="codebook_used"):
        VQModel(TINY).load_state_dict(state, strict=True)
    images = fresh.to(torch.bfloat16).decode_code(torch.randint(0, 64, (1, 16)))
    assert images.dtype == torch.bfloat16 and torch.isfinite(images.float()).all()


def test_a_channels_last_decoder_gets_channels_last_latents_and_the_same_images(monkeypatch):
    vq, codes = tiny_vq(), torch.randint(0, 64, (2, 16))
    layouts = []
    monkeypatch.setattr(vq.decoder.conv_in, "forward", lambda x, conv=vq.decoder.conv_in.forward: (
        layouts.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()), conv(x))[1])
    with torch.no_grad():
        plain = vq.decode_code(codes)
        vq.to(memory_format=torch.channels_last)
        nhwc = vq.decode_code(codes)
    assert layouts == [False, True]  # the default layout gets contiguous latents, as it decodes them fastest
    assert torch.allclose(nhwc, plain, atol=1e-5)


def test_prepare_vq_lays_out_the_decoder_as_asked_and_decodes_the_same_images():
    """channels_last=True: the 4-D weights channels-last (the default only where the decoder is compiled,
    on CUDA); on the CPU nothing is compiled, so the default keeps the plain layout."""
    from autoregressive.weights import prepare_vq

    codes = torch.randint(0, 64, (2, 16))
    plain = prepare_vq(tiny_vq(), "cpu", compile_decoder=True)
    nhwc = prepare_vq(tiny_vq(), "cpu", channels_last=True)
    assert plain.decoder.conv_in.weight.is_contiguous() and not plain.training
    assert nhwc.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not nhwc.decoder.conv_in.weight.is_contiguous()
    assert nhwc.post_quant_conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(nhwc.decode_code(codes), plain.decode_code(codes), atol=1e-5)


def test_the_decoder_compiles_in_inductors_deterministic_mode(monkeypatch):
    """Inductor otherwise picks some reductions' block sizes by timing them in each process, and two runs of
    one seed could decode different pixels; this torch knows the option (an unknown one raises here)."""
    from autoregressive.weights import compile_repeatably

    vq = tiny_vq()
    compile_repeatably(vq.decoder)  # torch validates the options as it wraps the module
    assert vq.decoder._compiled_call_impl is not None
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: seen.append(kwargs) or fn)
    compile_repeatably(tiny_vq().decoder)
    assert seen == [{"options": {"deterministic": True}}]
