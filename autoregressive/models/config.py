"""ARPGConfig: the sizes and options of an ARPG model (models/arpg.py builds it), with their checks and the
quantities derived from them: the embedding table's rows, the SwiGLU width, the head dimension."""
import math
from dataclasses import dataclass
from typing import Union

MLP_KERNELS = ("torch", "quack")  # ARPGConfig.mlp_kernel


@dataclass(frozen=True)
class ARPGConfig:
    dim: int
    n_layer: int  # self-attention + cross-attention layers, half each
    n_head: int
    vocab_size: int = 16384
    num_classes: int = 1000
    block_size: int = 256  # image tokens, a square grid
    cls_token_num: int = 1
    multiple_of: int = 256  # SwiGLU width rounding
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    # Stochastic depth of the last layer, rising linearly from 0 at the first (arpg.TwoPassDecoder); the
    # module that drops branches is passed to ARPG, since models/ imports torch only.
    drop_path_rate: float = 0.0
    class_dropout_prob: float = 0.1  # label dropped to "no class" in training, for guidance
    learned_pos_embed: bool = False  # absolute positions; not in the released models (models/arpg.py)
    # Layers recomputed in the backward pass (training memory): "none", "all", "self" (the
    # self-attention layers), "cross", or a number n: the first n layers in compute order.
    grad_checkpointing: Union[str, bool] = "none"
    condition_vocab_size: int = 0  # controllable generation: 0 = off; else ids 0..size-1, size = "no condition"
    condition_dropout_prob: float = 0.1  # condition map dropped to "no condition" in training
    # The MLP's kernels in training: "torch" (FeedForward's own code) or "quack" (kernels/quack_mlp.py, opt-in);
    # evaluation and sampling always run FeedForward's own code. Not in the weights.
    mlp_kernel: str = "torch"

    def __post_init__(self):
        if self.dim % self.n_head:
            raise ValueError(f"dim {self.dim} is not divisible by n_head {self.n_head}")
        if self.n_layer % 2:
            raise ValueError(f"n_layer must be even (half self, half cross layers), got {self.n_layer}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if math.isqrt(self.block_size) ** 2 != self.block_size:
            raise ValueError(f"block_size must be a square number of tokens, got {self.block_size}")
        if self.head_dim % 4:
            raise ValueError(f"head dim {self.head_dim} must be divisible by 4 for 2-D RoPE")
        if self.mlp_kernel not in MLP_KERNELS:
            raise ValueError(f"mlp_kernel must be one of {', '.join(MLP_KERNELS)}, got {self.mlp_kernel!r}")
        spec = {True: "all", False: "none"}.get(self.grad_checkpointing, str(self.grad_checkpointing))
        if spec not in ("none", "all", "self", "cross") and not (spec.isdigit() and int(spec) <= self.n_layer):
            raise ValueError(f"grad_checkpointing must be none, all, self, cross or a number of layers "
                             f"0..{self.n_layer}, got {self.grad_checkpointing!r}")
        object.__setattr__(self, "grad_checkpointing", spec)

    def checkpoints_layer(self, index: int) -> bool:
        """Whether layer `index` in compute order (self-attention layers first) is recomputed."""
        spec, num_self = self.grad_checkpointing, self.n_layer // 2
        if spec.isdigit():
            return index < int(spec)
        return spec == "all" or (spec == "self" and index < num_self) or (spec == "cross" and index >= num_self)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.block_size)

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * 4 * self.dim / 3)
        return -(-hidden // self.multiple_of) * self.multiple_of

    @property
    def mask_token_id(self) -> int:
        return self.vocab_size

    @property
    def null_class_id(self) -> int:
        return self.vocab_size + self.num_classes + 1

    @property
    def null_condition_id(self) -> int:
        return self.condition_vocab_size

    @property
    def embedding_rows(self) -> int:
        return self.vocab_size + 1 + self.num_classes + 1 + 1
