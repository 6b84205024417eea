"""Training precision policies: `exact` (the default) is the released recipe's numerics; the others are
opt-in, faster, and checked against it by scripts/check_precision.py.

exact  float32 parameters, residual stream and AdamW state; matmuls under bf16 autocast (--mixed-precision).
bf16   every pass runs on bf16 copies of the float32 parameters (so the residual stream is bf16 too);
       gradients come back in float32 to the float32 parameters, which stay the master weights that AdamW
       (float32 state) updates and checkpoints save. Under FSDP through its MixedPrecisionPolicy (gathered
       in bf16, reduced in float32); under DDP or one process through Bf16Compute (cast in the pass,
       float32 gradients reduced), which cannot run with --grad-checkpointing (FSDP can).
fp8    torchao's float8 training: the Linear layers that `converts_to_float8` picks run their matmuls in
       float8 with dynamic scales, one per tensor; parameters and optimizer state stay float32. CUDA,
       compute capability 8.9+ (Ada, Hopper) and the optional torchao package.
fp8-rowwise  the same with one scale per row of each operand (torchao's "rowwise" recipe): an outlier
       coarsens only its own row, at the cost of the row-wise scaled matmul kernel.

Every policy keeps the exact model's parameter names and float32 weights, so checkpoints load strictly
into the exact model.
"""
import importlib.util
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from autoregressive.kernels import quack_mlp
from autoregressive.models.config import MLP_KERNELS
from autoregressive.utils.cli import UserError
from autoregressive.utils.device import gpu_unavailable_reason

PRECISION_POLICIES = ("exact", "bf16", "fp8", "fp8-rowwise")
FLOAT8_RECIPES = {"fp8": None, "fp8-rowwise": "rowwise"}  # policy -> torchao recipe (None: its default, tensor-wise)
# Below this width a matmul gains less from float8 than the scaling passes (amax, cast) cost.
FP8_MIN_FEATURES = 1024
FP8_MIN_CAPABILITY = (8, 9)


def check_policy(policy: str, data_parallel: str, grad_checkpointing: str = "none") -> None:
    """A clear error for an unknown policy or one that the data-parallel mode cannot run."""
    if policy not in PRECISION_POLICIES:
        raise UserError(f"--precision-policy must be one of {', '.join(PRECISION_POLICIES)}, got {policy!r}")
    if policy == "bf16" and data_parallel != "fsdp" and grad_checkpointing != "none":
        # The recomputation runs after Bf16Compute's pass has put the float32 parameters back.
        raise UserError("--precision-policy bf16 with --grad-checkpointing needs --data-parallel fsdp (on one GPU: "
                        "torchrun --nproc_per_node=1); without FSDP use --activation-memory-budget to save memory")


def check_quack_mlp(policy: str, mixed_precision: str, deterministic: bool) -> None:
    """A clear error where --mlp-kernel quack cannot run beside the other numerics flags."""
    if policy in FLOAT8_RECIPES:
        raise UserError(f"--mlp-kernel quack computes the MLP's matmuls that --precision-policy {policy} would run in "
                        "float8; use one of the two")
    if mixed_precision == "none":
        raise UserError("--mlp-kernel quack runs its matmuls in bf16 or fp16: it needs --mixed-precision bf16 (the "
                        "default) or fp16")
    if deterministic:
        raise UserError("--mlp-kernel quack chooses its GEMMs' configurations by timing them, so a second run may "
                        "sum in another order: drop --deterministic or --mlp-kernel quack")


def parse_policy_list(text: str, add_exact: bool = True) -> List[str]:
    """A comma-separated list of policies to compare, each once: exact first (the reference), added
    unless add_exact is False."""
    policies = [policy for policy in text.split(",") if policy]
    unknown = [policy for policy in policies if policy not in PRECISION_POLICIES]
    if unknown:
        raise UserError(f"unknown precision policy {', '.join(unknown)}; choose from {', '.join(PRECISION_POLICIES)}")
    ordered = list(dict.fromkeys(policies))
    if not add_exact:
        return ordered
    return ["exact"] + [policy for policy in ordered if policy != "exact"]


def parse_mlp_kernels(text: str) -> List[str]:
    """--mlp-kernels of the benchmarks and the quality check: a comma-separated list of opt-in MLP kernels
    to run beside the default ("torch", left out of the list)."""
    kernels = list(dict.fromkeys(kernel for kernel in text.split(",") if kernel and kernel != "torch"))
    unknown = [kernel for kernel in kernels if kernel not in MLP_KERNELS]
    if unknown:
        raise UserError(f"--mlp-kernels: unknown {', '.join(unknown)}; choose from {', '.join(MLP_KERNELS[1:])}")
    return kernels


def with_mlp_kernels(policies: List[str], kernels: List[str]) -> List[Tuple[str, str]]:
    """The (policy, MLP kernel) runs that each opt-in kernel adds: one beside every listed policy it can
    join (train_c2i.py refuses a float8 policy with quack, whose MLP would run those matmuls itself)."""
    return [(policy, kernel) for kernel in kernels for policy in policies if policy not in FLOAT8_RECIPES]


def fp8_unavailable_reason(device: torch.device) -> Optional[str]:
    """Why float8 training cannot run on `device` here, or None when it can."""
    if importlib.util.find_spec("torchao") is None:
        return "needs the optional torchao package (pip install torchao)"
    return gpu_unavailable_reason(device, FP8_MIN_CAPABILITY, "Ada, Hopper")


def unavailable_reason(policy: str, mlp_kernel: str, device: torch.device) -> Optional[str]:
    """Why a run of `policy` with `mlp_kernel` (train_c2i.py's flags) cannot train on `device` here, or None."""
    if policy in FLOAT8_RECIPES:
        return fp8_unavailable_reason(device)
    return quack_mlp.unavailable_reason(device) if mlp_kernel == "quack" else None


def converts_to_float8(module: nn.Module, name: str) -> bool:
    """Which Linear layers fp8 converts: not the output head (its logits feed a softmax over the whole
    vocabulary, and the chunked loss reads its weight directly), and only layers whose both widths are
    multiples of 16 (float8 matmul kernels need it) and at least FP8_MIN_FEATURES."""
    if not isinstance(module, nn.Linear) or name.split(".")[-1] == "head":
        return False
    widths = (module.in_features, module.out_features)
    return all(width % 16 == 0 and width >= FP8_MIN_FEATURES for width in widths)


def prepare_model(model: nn.Module, policy: str, device: torch.device) -> nn.Module:
    """Apply the policy's changes to the module itself, before compiling and wrapping: fp8 swaps the
    (and fp8-rowwise) chosen Linear layers for torchao's Float8Linear in place (same parameter names). Returns `model`."""
    if policy not in FLOAT8_RECIPES:
        return model
    reason = fp8_unavailable_reason(device)
    if reason is not None:
        raise UserError(f"--precision-policy {policy} {reason}; use --precision-policy exact or bf16")
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    recipe = FLOAT8_RECIPES[policy]
    config = None if recipe is None else Float8LinearConfig.from_recipe_name(recipe)
    return convert_to_float8_training(model, module_filter_fn=converts_to_float8, config=config)


class Bf16Compute(nn.Module):
    """The bf16 policy without FSDP: calls `model` with bf16 copies of its float32 parameters, made
    inside the pass, so autograd brings the gradients back through the cast into the float32 .grad of
    the master weights (what DDP reduces and AdamW updates). Buffers (the float32 RoPE tables) are left
    alone. The training step calls this module; optimizer, EMA and checkpoints see `model`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        bf16 = {name: parameter.to(torch.bfloat16) for name, parameter in self.model.named_parameters()}
        return torch.func.functional_call(self.model, bf16, args, kwargs)


def fsdp_mixed_precision(policy: str):
    """The MixedPrecisionPolicy that fully_shard gets under `policy` (None: FSDP's float32 default)."""
    if policy != "bf16":
        return None
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy  # torch >= 2.6
    except ImportError:
        from torch.distributed._composable.fsdp import MixedPrecisionPolicy
    # cast_forward_inputs=False: the float32 RoPE tables passed to every layer must stay float32
    # (the rotation runs in float32); the hidden states are bf16 already, from the bf16 embedding.
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)
