"""--kernels (autoregressive/train/kernels.py, autoregressive/kernels/liger.py): the flag's wiring into the
model's configuration, the one-line errors without the package or a GPU, and, with pure-PyTorch stand-ins
for Liger's three functions, that the blocks call them in training (never in evaluation) with the model's
own arguments and give the model's own loss and gradients (same formulas)."""
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from autoregressive.models.arpg import ARPG_models
from autoregressive.train import kernels
from autoregressive.train.config import TrainConfig, build_model
from autoregressive.train.loop import Trainer
from autoregressive.utils.cli import UserError
from autoregressive.utils.dist import init_distributed
from train_c2i import config_from_args, get_args_parser


def test_flag_reaches_the_models_config_and_bad_names_are_refused():
    args = get_args_parser().parse_args(["--code-path", "codes", "--kernels", "liger-ce", "--gpt-model", "ARPG-tiny"])
    cfg = config_from_args(args)
    assert cfg.kernels == "liger-ce" and build_model(cfg).config.kernels == "liger-ce"
    assert get_args_parser().parse_args(["--code-path", "codes"]).kernels == "none"
    with pytest.raises(UserError, match="--kernels must be one of none, liger-ce, liger"):
        TrainConfig(code_path="", kernels="quack")
    with pytest.raises(ValueError, match="kernels must be one of none, liger-ce, liger"):
        ARPG_models["ARPG-tiny"](kernels="quack")
    assert kernels.parse_kernel_list("liger,liger-ce,liger") == ["none", "liger", "liger-ce"]
    with pytest.raises(UserError, match="unknown --kernels te"):
        kernels.parse_kernel_list("none,te")


def test_missing_package_or_gpu_is_one_clear_error(monkeypatch):
    kernels.check_kernels_available("none", torch.device("cpu"))
    real_find_spec = kernels.importlib.util.find_spec
    monkeypatch.setattr(kernels.importlib.util, "find_spec",
                        lambda name, *a: None if name == "liger_kernel" else real_find_spec(name, *a))
    with pytest.raises(UserError, match=r"--kernels liger needs the optional liger-kernel package \(pip install"):
        kernels.check_kernels_available("liger", torch.device("cpu"))
    monkeypatch.setattr(kernels.importlib.util, "find_spec", lambda name, *a: object())
    with pytest.raises(UserError, match="--kernels liger-ce needs a CUDA GPU"):
        kernels.check_kernels_available("liger-ce", torch.device("cpu"))


def install_stand_ins(monkeypatch, calls):
    """Liger's three autograd functions as PyTorch code of the same formulas, recording their arguments."""
    def fused_linear_ce(features, weight, targets, bias, ce_weight, ignore_index, lse_square_scale,
                        label_smoothing, reduction, softcap, return_z_loss, accum_dtype):
        calls.append("ce")
        assert (bias, ce_weight, ignore_index, reduction, return_z_loss, accum_dtype) == (
            None, None, -100, "mean", False, torch.float32)
        assert features.dtype == weight.dtype and features.ndim == 2 and targets.shape == features.shape[:1]
        return F.cross_entropy(F.linear(features, weight).float(), targets), None, None, None

    def rms_norm(x, weight, eps, offset, casting_mode, in_place):
        calls.append("norm")
        assert (offset, casting_mode) == (0.0, "llama")
        return F.rms_norm(x, (x.shape[-1],), eps=eps) * weight

    def silu_mul(gate, up):
        calls.append("swiglu")
        return F.silu(gate) * up

    for module, name, apply in (("fused_linear_cross_entropy", "LigerFusedLinearCrossEntropyFunction", fused_linear_ce),
                                ("rms_norm", "LigerRMSNormFunction", rms_norm),
                                ("swiglu", "LigerSiLUMulFunction", silu_mul)):
        fake = types.ModuleType(f"liger_kernel.ops.{module}")
        setattr(fake, name, types.SimpleNamespace(apply=apply))
        monkeypatch.setitem(sys.modules, f"liger_kernel.ops.{module}", fake)


NO_DROPOUT = dict(token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0, class_dropout_prob=0.0)


@pytest.mark.parametrize("kernel_set", ["liger-ce", "liger"])
def test_the_blocks_call_the_kernels_in_training_for_the_models_loss_and_gradients(monkeypatch, kernel_set):
    calls = []
    install_stand_ins(monkeypatch, calls)
    torch.manual_seed(0)
    plain = ARPG_models["ARPG-tiny"](**NO_DROPOUT)  # no dropout: training is the same arithmetic on both sides
    torch.nn.init.normal_(plain.head.weight, std=0.02)
    ligered = ARPG_models["ARPG-tiny"](**NO_DROPOUT, kernels=kernel_set)
    ligered.load_state_dict(plain.state_dict())
    assert ligered.state_dict().keys() == plain.state_dict().keys()
    codes = torch.randint(0, 16384, (2, 256))
    labels, orders = torch.tensor([3, 7]), torch.rand(2, 256).argsort(1)
    losses = []
    for model in (plain, ligered):
        _, loss = model(codes, labels, targets=codes, orders=orders, return_logits=False)
        loss.backward()
        losses.append(loss)
    assert torch.allclose(losses[0], losses[1], rtol=1e-6)
    for (name, a), b in zip(plain.named_parameters(), ligered.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7), name
    expected = {"ce"} if kernel_set == "liger-ce" else {"ce", "norm", "swiglu"}
    assert set(calls) == expected and calls.count("norm") == (0 if kernel_set == "liger-ce" else 2 * 4 + 2)
    calls.clear()
    ligered.eval()  # evaluation and sampling run the model's own code
    with torch.no_grad():
        logits, _ = ligered(codes, labels, orders=orders)
        tokens = ligered.generate(labels, num_steps=4, cfg_scale=1.0)
    assert calls == [] and logits.shape == (2, 256, 16384) and tokens.shape == (2, 256)


def test_the_trainer_refuses_a_model_built_for_other_kernels(tmp_path):
    cfg = TrainConfig(code_path="", gpt_model="ARPG-tiny", global_batch_size=2, num_workers=0, kernels="none",
                      results_dir=str(tmp_path))
    dataset = torch.utils.data.TensorDataset(torch.zeros(2, 256, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="the model's kernels are 'liger', the run's 'none'"):
        Trainer(cfg, init_distributed("cpu"), dataset, model=ARPG_models["ARPG-tiny"](kernels="liger"))


@pytest.mark.skipif(not torch.cuda.is_available() or kernels.importlib.util.find_spec("liger_kernel") is None,
                    reason="needs a CUDA GPU and liger-kernel")
@pytest.mark.parametrize("kernel_set", ["liger-ce", "liger"])
def test_liger_kernels_agree_with_the_model_on_gpu(kernel_set):
    """The real kernels, bf16 autocast as in training: the loss to bf16's rounding, the gradients close."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    plain = ARPG_models["ARPG-tiny"](**NO_DROPOUT).to(device)
    torch.nn.init.normal_(plain.head.weight, std=0.02)
    ligered = ARPG_models["ARPG-tiny"](**NO_DROPOUT, kernels=kernel_set).to(device)
    ligered.load_state_dict(plain.state_dict())
    codes = torch.randint(0, 16384, (8, 256), device=device)
    labels, orders = torch.arange(8, device=device), torch.rand(8, 256, device=device).argsort(1)
    results = []
    for model in (plain, ligered):  # training mode, where the blocks call the kernels
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = model(codes, labels, targets=codes, orders=orders, return_logits=False)
        loss.backward()
        results.append((loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    (loss, grads), (ligered_loss, ligered_grads) = results
    relative = ((ligered_grads - grads).norm() / grads.norm()).item()
    print(f"{kernel_set}: loss {loss:.6f} vs {ligered_loss:.6f}, gradient relative difference {relative:.2e}")
    assert abs(ligered_loss - loss) < 2e-3 * loss and relative < 2e-2
