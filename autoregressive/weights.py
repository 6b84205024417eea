"""Load released or our own weights into a model, strictly, with errors that say what to do.

Accepted files: .safetensors, or a torch .pt/.pth holding a bare state dict or one under "model",
"ema", "module" or "state_dict" (the official layouts). Keys saved through DDP ("module.") or
torch.compile ("_orig_mod.") are accepted too. A file with both EMA and raw weights gives the EMA
ones unless asked otherwise, as DiT samples.
"""
import argparse
import os
import pickle
import zipfile
from typing import Callable, Dict, Optional, Tuple

import torch

from autoregressive.utils.cli import InputNotFound, UserError
from autoregressive.utils.device import repeatable_compile_options
from autoregressive.utils.logger import get_logger

STATE_DICT_ENTRIES = ("model", "ema", "module", "state_dict")
RAW_ENTRIES = ("model", "module", "state_dict")  # entries holding the trained (not averaged) weights
WEIGHT_CHOICES = ("ema", "model")  # the samplers' --weights
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def read_checkpoint(path: str):
    """Read a checkpoint file with weights_only=True; official training checkpoints carry an
    argparse.Namespace under "args", which is allowed as plain data."""
    if not os.path.isfile(path):
        raise InputNotFound(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError) as error:
            raise UserError(f"{path} is not a readable .safetensors file ({first_line(error)}): it is corrupt "
                            "or incomplete; download or copy it again") from error
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            # Memory-mapped: only the tensors used are read, so the weights of a training checkpoint load
            # without its optimizer state, and the processes of a node share the pages. Files in the
            # pre-1.6 format cannot be mapped and are read whole.
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:
                if "mmap can only be used" not in str(error):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({first_line(error)}): it is corrupt or "
                        "incomplete; download or copy it again") from error


def first_line(error: Exception) -> str:
    """The informative line of a loader's error (torch's weights-only message puts it after a preamble)."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    return next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)


def add_weights_arg(parser) -> None:
    """The samplers' --weights flag (read by select_state_dict)."""
    parser.add_argument("--weights", choices=list(WEIGHT_CHOICES), default=None,
                        help="which weights of --gpt-ckpt: ema or model (default: EMA when the file has it)")


def select_state_dict(checkpoint, which: Optional[str] = None) -> Tuple[str, dict]:
    """Which weights of a loaded checkpoint to use, and them: ("ema", ...) or ("model", ...).
    which: "ema", "model", or None for EMA when the file has it, else the raw model."""
    if not isinstance(checkpoint, dict):
        raise UserError(f"checkpoint holds a {type(checkpoint).__name__}, not a state dict")
    if which not in (None, *WEIGHT_CHOICES):
        raise UserError(f"--weights must be one of {WEIGHT_CHOICES}, got {which!r}")
    raw = next((name for name in RAW_ENTRIES if name in checkpoint), None)
    if which == "ema" or (which is None and "ema" in checkpoint):
        if "ema" not in checkpoint:
            raise UserError(f"--weights ema: the checkpoint holds no EMA weights (entries: {sorted(checkpoint)[:8]}); "
                            "it was trained without --ema, so pass --weights model")
        return "ema", checkpoint["ema"]
    if raw is None and "ema" in checkpoint:
        raise UserError("--weights model: the checkpoint holds EMA weights only; pass --weights ema")
    return "model", checkpoint[raw] if raw else checkpoint  # a bare state dict has no entries


def extract_state_dict(checkpoint, which: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint, chosen by `select_state_dict`, without wrapper prefixes."""
    _, state = select_state_dict(checkpoint, which)
    if not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise UserError(f"no state dict found in the checkpoint (entries: {sorted(checkpoint)[:8]}); "
                        f"expected tensors at the top level or under one of {STATE_DICT_ENTRIES}")
    return {strip_wrapper_prefixes(key): value for key, value in state.items()}


def strip_wrapper_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def describe_arpg_size(state: Dict[str, torch.Tensor]) -> str:
    """Which ARPG size a state dict looks like, e.g. "ARPG-XL (36 layers, dim 1280)"."""
    from autoregressive.models.arpg import ARPG_models

    if "embeddings.weight" not in state:
        return "not an ARPG checkpoint (no embeddings.weight)"
    dim = state["embeddings.weight"].shape[1]
    num_self = len({key.split(".")[2] for key in state if key.startswith("layers.self_dec.")})
    layers = 2 * num_self
    vocab = state["head.weight"].shape[0] if "head.weight" in state else None
    with torch.device("meta"):
        configs = {name: build().config for name, build in ARPG_models.items()}
    same_shape = [name for name, config in configs.items() if (config.dim, config.n_layer) == (dim, layers)]
    # sizes of equal width and depth (tiny, digits) differ in vocabulary: prefer the one whose head fits
    same_shape.sort(key=lambda name: configs[name].vocab_size != vocab)
    if same_shape:
        name = same_shape[0]
        return f"{name} ({layers} layers, dim {dim}); pass --gpt-model {name}"
    return f"an ARPG model with {layers} layers and dim {dim}, which matches no known size"


def check_state_dict(model: torch.nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Raise a UserError naming missing, unexpected and mis-shaped keys, if any."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(key for key in set(expected) & set(state) if expected[key].shape != state[key].shape)
    if not (missing or unexpected or misshaped):
        return
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            parts.append(f"{len(keys)} {label} keys: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}")
    for key in misshaped[:6]:
        parts.append(f"{key}: checkpoint {tuple(state[key].shape)}, model {tuple(expected[key].shape)}")
    only_conditions = set(missing + unexpected + misshaped) == {"condition_embeddings.weight"}
    if hasattr(model, "config") and hasattr(model.config, "n_layer") and not only_conditions:  # the size is right
        parts.append(f"the checkpoint looks like {describe_arpg_size(state)}")
    if "condition_embeddings.weight" in unexpected:
        parts.append("a controllable model: pass --condition-vocab-size as it was trained (its condition.json)")
    if "condition_embeddings.weight" in missing:
        parts.append("the checkpoint has no condition table: a class-only model takes no --condition-map, "
                     "--condition-path or --condition-vocab-size")
    raise UserError(f"the checkpoint does not fit this {type(model).__name__}: " + "; ".join(parts))


def load_model_weights(model: torch.nn.Module, path: str, weights: Optional[str] = None,
                       assign: bool = False) -> torch.nn.Module:
    """Fill `model` from the file at `path` with strict=True (weights: see select_state_dict); returns
    the model and logs which weights it got. assign: take the file's tensors as the parameters instead
    of copying into them (load_state_dict's assign; what a model built on the meta device needs)."""
    checkpoint = read_checkpoint(path)
    which, _ = select_state_dict(checkpoint, weights)
    state = extract_state_dict(checkpoint, which)
    check_state_dict(model, state)
    model.load_state_dict(state, strict=True, assign=assign)
    # torchrun's rank, for the process group may not exist yet; other ranks stay quiet
    get_logger("arpg.weights", rank=int(os.environ.get("RANK", 0))).info(
        f"loaded the {'EMA' if which == 'ema' else 'raw model'} weights of {path}")
    return model


PRECISIONS = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_from_checkpoint(build: Callable[[], torch.nn.Module], path: str,
                          weights: Optional[str] = None) -> torch.nn.Module:
    """build() on the meta device, its every parameter and buffer then taken from the file at `path`
    (strict; weights: see select_state_dict). No random initial weights are drawn only to be overwritten
    (the bulk of building a large model on the CPU; sample_c2i_ddp.py --timings shows the loading), and
    the weights are not copied once more on the host before they move to the GPU. Tensors a module keeps
    as plain attributes must be built on an explicit device (ARPG's RoPE table is)."""
    with torch.device("meta"):
        model = build()
    load_model_weights(model, path, weights, assign=True)
    with torch.no_grad():  # a file's tensor may be a strided view; copying into a built model never was
        for tensor in [*model.parameters(), *model.buffers()]:
            if not tensor.is_contiguous():
                tensor.data = tensor.data.contiguous()
    return model


def load_gpt(name: str, ckpt: Optional[str], device, precision: str = "none", weights: Optional[str] = None,
             **overrides):
    """Build ARPG_models[name](**overrides), fill it strictly from ckpt (weights: "ema", "model" or None
    for EMA when present), cast, eval mode."""
    from autoregressive.models.arpg import ARPG_models

    build = lambda: ARPG_models[name](**overrides)
    model = build_from_checkpoint(build, ckpt, weights) if ckpt else build()
    return model.to(device=device, dtype=PRECISIONS[precision]).eval()


def prepare_vq(vq, device, dtype=torch.float32, compile_decoder: bool = False,
               channels_last: Optional[bool] = None):
    """Move and cast the VQ tokenizer for decoding; compile its decoder on CUDA if asked. Float32 with
    TF32 is what the official scripts decode with; docs/sampling.md compares the dtypes.
    channels_last: the convolutions' layout; by default channels-last exactly where the decoder is
    compiled (faster so at large batches compiled, slower eagerly: scripts/bench_vq_decode measures both)."""
    compiled = compile_decoder and torch.device(device).type == "cuda"
    vq = vq.to(device=device, dtype=dtype).eval()
    if compiled if channels_last is None else channels_last:
        vq = vq.to(memory_format=torch.channels_last)  # 4-D weights only; decode_code follows the layout
    if compiled:
        compile_repeatably(vq.decoder)
    return vq


def compile_repeatably(module: torch.nn.Module) -> None:
    """torch.compile `module` in place (its state dict keeps its names) so that every process computes the
    same numbers (utils/device.py, repeatable_compile_options): two runs of one seed decode the same pixels."""
    module.compile(options=repeatable_compile_options())


def load_vq(name: str, ckpt: str, device, dtype=torch.float32, compile_decoder: bool = False):
    """The VQ tokenizer, filled strictly from ckpt ("model" entry or bare); see prepare_vq."""
    from tokenizer.vq_model import VQ_models

    return prepare_vq(build_from_checkpoint(VQ_models[name], ckpt), device, dtype, compile_decoder)


def module_state_dict(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The weights under the modules' own names (fused projections: see models/official_names.py),
    sharing storage with the model: what a sharded checkpoint holds and is read back into. ARPG keeps
    no buffers in its state dict, so its parameters are all of it."""
    return {name: parameter.detach() for name, parameter in model.named_parameters()}
