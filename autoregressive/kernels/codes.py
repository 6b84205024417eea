"""The one table of KV-cache code dtypes: how a quantised cache may store keys and values as one-byte
codes with a float32 scale per vector. Every list of cache kinds derives from KV_CODES (the samplers'
--kv-cache choices, scripts/check_precision.py's *-kv modes, the benchmarks' cache lists); a new dtype is
one entry here plus its branch in the kernels' widening (decode_attention._widen) if Triton needs one."""
from dataclasses import dataclass
from typing import Dict, Optional

import torch


@dataclass(frozen=True)
class CodeDtype:
    """dtype: the codes' torch dtype. needs_sm89: Triton converts it only on compute capability 8.9+.
    wide_blocks: the decoding kernel streams 128-key blocks for up to 16 queries a row (a tuning choice,
    measured by scripts/bench_cache_kernels.py). widen_by_bits: the decoding kernel widens the codes to fp16
    by bit arithmetic instead of the conversion instruction (the same values)."""
    dtype: torch.dtype
    needs_sm89: bool = False
    wide_blocks: bool = False
    widen_by_bits: bool = False

    @property
    def code_max(self) -> float:
        """The code standing for a vector's largest |entry|: the largest finite value (e4m3: 448, int8: 127;
        int8's -128 is unused)."""
        info = torch.finfo(self.dtype) if self.dtype.is_floating_point else torch.iinfo(self.dtype)
        return float(info.max)

    @property
    def integer(self) -> bool:
        """Integer codes round the scaled entry to nearest before the (truncating) cast."""
        return not self.dtype.is_floating_point


# --kv-cache name -> code dtype. The cache kind without codes (the weights' dtype) is not listed here.
KV_CODES: Dict[str, CodeDtype] = {
    "int8": CodeDtype(torch.int8, widen_by_bits=True),
    "fp8": CodeDtype(torch.float8_e4m3fn, needs_sm89=True, wide_blocks=True),  # float8 e4m3
}
CODE_DTYPES = {code.dtype: code for code in KV_CODES.values()}


def code_dtype(dtype: torch.dtype) -> Optional[CodeDtype]:
    """The table entry of a code dtype; None for a plain (unquantised) dtype."""
    return CODE_DTYPES.get(dtype)
