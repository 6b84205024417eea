"""The page's number fields and sampling controls, checked: each bad value is answered by one UserError
line naming the field, before any work starts."""
import math
from dataclasses import dataclass

from autoregressive.sampling import KV_CACHE_DTYPES, SamplingConfig
from autoregressive.utils.cli import UserError

SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes any int64 seed


def number(field: str, value, low: float, high: float, whole: bool = False):
    """A field's value as int (whole) or float, or a UserError naming the field: empty, not a number, not
    whole, or outside [low, high]."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{field} is empty: enter a number")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{field} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise UserError(f"{field} must be a finite number, got {value}")
    if whole and value != int(value):
        raise UserError(f"{field} must be a whole number, got {value:g}")
    if whole:
        value = int(value)  # compared as an int: a float near 2**63 would round into the range
    if not low <= value <= high:
        raise UserError(f"{field} must be between {shown(low)} and {shown(high)}, got {shown(value)}")
    return value


def shown(value) -> str:
    """A bound or value as a person reads it: whole numbers in full up to 20 digits, others short."""
    return str(int(value)) if value == int(value) and abs(value) < 1e20 else f"{value:g}"


def top_p_field(value) -> float:
    top_p = number("top-p", value, 0, 1)
    if top_p == 0:
        raise UserError("top-p must be above 0 (1 keeps every token, 0.9 the likeliest 90%)")
    return top_p


@dataclass(frozen=True)
class Settings:
    """What the page's sampling controls hold: the decoding settings, the seed, and whether the layers run
    compiled (torch.compile; CUDA only)."""
    sampling: SamplingConfig
    seed: int
    compiled: bool

    # The page passes its controls in this order (app.py's sampling_controls).
    FIELDS = ("steps", "cfg scale", "cfg schedule", "temperature", "top-k", "top-p", "KV cache",
              "compiled layers", "seed")

    @classmethod
    def from_fields(cls, steps, cfg_scale, cfg_schedule, temperature, top_k, top_p, kv_cache, compiled, seed,
                    max_steps: int, vocab_size: int) -> "Settings":
        if kv_cache not in KV_CACHE_DTYPES:
            raise UserError(f"KV cache must be one of {', '.join(KV_CACHE_DTYPES)}, got {kv_cache!r}")
        sampling = SamplingConfig(
            num_steps=number("steps", steps, 1, max_steps, whole=True),
            cfg_scale=number("CFG scale", cfg_scale, 0, 100),
            cfg_schedule=cfg_schedule,
            temperature=number("temperature", temperature, 0, 100),
            top_k=number("top-k", top_k, 0, vocab_size, whole=True),
            top_p=top_p_field(top_p),
            kv_cache=kv_cache)
        return cls(sampling, number("seed", seed, 0, SEED_MAX, whole=True), bool(compiled))
