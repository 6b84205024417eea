"""Cross-entropy over a large vocabulary without keeping the full logits for the backward pass."""
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _chunk_loss_sum(features: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.linear(features, weight).float(), targets, reduction="sum")


def chunked_cross_entropy(features: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          chunk_size: int = 8192) -> torch.Tensor:
    """Mean cross-entropy of the logits features @ weight.T against targets, chunk by chunk.

    features (M, D), weight (V, D), targets (M,). Each chunk's logits are recomputed in the backward
    pass instead of being stored: at 128 x 256 tokens and V = 16384 the float32 logits alone are 2 GiB.
    """
    total = features.new_zeros((), dtype=torch.float32)
    for start in range(0, features.shape[0], chunk_size):
        end = start + chunk_size
        total = total + checkpoint(_chunk_loss_sum, features[start:end], weight, targets[start:end],
                                   use_reentrant=False)
    return total / features.shape[0]
