"""2-D rotary position embedding with the class-token rows of the released ARPG models.

The table has one row per *slot*: slots 0..C-1 are the C class tokens, slot C + p is image position p
(raster order on a square grid). Each row holds (cos, sin) for head_dim // 2 rotation planes:
the first half of the planes rotate with the token's row index, the second half with its column index.
"""
import torch


def rope_table_2d(grid_size: int, head_dim: int, base: float, num_class_tokens: int) -> torch.Tensor:
    """Return the float32 table (num_class_tokens + grid_size**2, head_dim // 2, 2) of (cos, sin).

    The class-token rows are all zeros (not cos=1, sin=0), so rotating a class token's query or key
    gives exactly zero: a quirk of the released checkpoints that we keep, since they were trained with it.
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head dim divisible by 4, got {head_dim}")
    planes_per_axis = head_dim // 4
    axis_dim = head_dim // 2
    # Built on the CPU in float32 whatever the default device or dtype, like the released code.
    exponents = torch.arange(0, axis_dim, 2, device="cpu")[:planes_per_axis].float() / axis_dim
    inv_freq = 1.0 / (base ** exponents)  # (head_dim/4,)
    angles_1d = torch.outer(torch.arange(grid_size, device="cpu").float(), inv_freq)  # (g, head_dim/4)
    angles = torch.cat(
        [
            angles_1d[:, None, :].expand(grid_size, grid_size, planes_per_axis),  # row index
            angles_1d[None, :, :].expand(grid_size, grid_size, planes_per_axis),  # column index
        ],
        dim=-1,
    ).reshape(grid_size * grid_size, axis_dim)
    image_rows = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)  # (g*g, head_dim/2, 2)
    class_rows = torch.zeros(num_class_tokens, axis_dim, 2, device="cpu")
    return torch.cat([class_rows, image_rows], dim=0)


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, n, ..., head_dim) by rope (B or 1, n, head_dim // 2, 2) of (cos, sin), in float32,
    back to x's dtype; the middle dims (heads, or q/k and heads) share the rotation. Adjacent channels
    (2i, 2i+1) form rotation plane i, as in the released checkpoints."""
    rope = rope.view(*rope.shape[:2], *([1] * (x.ndim - 3)), *rope.shape[-2:])
    pairs = x.float().unflatten(-1, (-1, 2))  # (B, n, ..., head_dim/2, 2)
    if torch.compiler.is_compiling():
        # Inductor fuses this real arithmetic into one kernel; it cannot generate code for complex ops.
        even, odd, cos, sin = pairs[..., 0], pairs[..., 1], rope[..., 0], rope[..., 1]
        rotated = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1)
    else:
        # Eagerly (and in the CUDA graphs of decoding) one complex product is one kernel instead of six.
        rotated = torch.view_as_real(torch.view_as_complex(pairs) * torch.view_as_complex(rope))
    return rotated.flatten(-2).type_as(x)
