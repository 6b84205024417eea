"""Device choice and the matmul precision of the entry scripts."""
import torch

from autoregressive.utils.cli import UserError


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA when available), 'cuda' or 'cpu'."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA device is visible; pass --device cpu or auto")
    return torch.device(name)


def enable_tf32() -> None:
    """TF32 for float32 matmuls and convolutions on CUDA, as the official scripts run."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
