"""The settings of ARPG's parallel decoding (SamplingConfig and its command-line flags) and its pure
functions: the step plan, the guidance scale, filtering, drawing."""
import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from autoregressive.kernels.codes import KV_CODES
from autoregressive.utils.cli import UserError, renamed_note, renamed_values

SAMPLE_SCHEDULES = ("arccos", "cosine")
CFG_SCHEDULES = ("linear", "constant")
# How decoding stores keys and values: in the weights' dtype, or as one-byte codes (kernels/codes.py's
# table: int8, e4m3) with a float32 scale per vector (half the bytes that decoding reads; opt-in,
# scripts/check_precision.py judges their quality).
KV_CACHE_DTYPES = {"weights": None, **{name: code.dtype for name, code in KV_CODES.items()}}
RENAMED_KV_CACHES = {"model": "weights"}  # old --kv-cache values, still accepted with a note


@dataclass(frozen=True)
class SamplingConfig:
    num_steps: int = 64
    cfg_scale: float = 4.0
    cfg_schedule: str = "linear"
    sample_schedule: str = "arccos"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    kv_cache: str = "weights"  # a key of KV_CACHE_DTYPES

    # Fields that act only on drawing tokens from the guided logits, outside the network pass; every
    # other field may change the work of a step (see captured_settings).
    DRAW_FIELDS = ("temperature", "top_k", "top_p")

    def __post_init__(self):
        if self.sample_schedule not in SAMPLE_SCHEDULES:
            raise UserError(f"unknown sample schedule {self.sample_schedule!r}; choose one of {SAMPLE_SCHEDULES}")
        if self.cfg_schedule not in CFG_SCHEDULES:
            raise UserError(f"unknown cfg schedule {self.cfg_schedule!r}; choose one of {CFG_SCHEDULES}")
        if self.num_steps < 1:
            raise UserError(f"num_steps must be >= 1 (--step), got {self.num_steps}")
        if self.cfg_scale < 0:  # below 0 would push away from the class: no meaning, so refused
            raise UserError(f"cfg_scale must be >= 0 (--cfg-scale), got {self.cfg_scale}: 0 is the \"no class\" "
                            "prediction alone, 1 the class alone")
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UserError(f"top_k must be >= 0, got {self.top_k}")
        if self.kv_cache in RENAMED_KV_CACHES:
            renamed_note(f"kv_cache={self.kv_cache!r}", f"kv_cache={RENAMED_KV_CACHES[self.kv_cache]!r}")
            object.__setattr__(self, "kv_cache", RENAMED_KV_CACHES[self.kv_cache])
        if self.kv_cache not in KV_CACHE_DTYPES:
            raise UserError(f"unknown KV cache {self.kv_cache!r} (--kv-cache); choose one of {tuple(KV_CACHE_DTYPES)}")

    @property
    def uses_guidance(self) -> bool:
        return self.cfg_scale != 1.0

    @property
    def kv_cache_dtype(self) -> Optional[torch.dtype]:
        """The KV cache's storage dtype; None: the weights' dtype."""
        return KV_CACHE_DTYPES[self.kv_cache]

    def captured_settings(self) -> Tuple:
        """Every field that may change a step's network pass, as (name, value) pairs: what a cache of
        captured steps must be keyed on. A new field counts unless it is listed in DRAW_FIELDS."""
        return tuple((field.name, getattr(self, field.name)) for field in dataclasses.fields(self)
                     if field.name not in self.DRAW_FIELDS)

    def draw(self, logits: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """One token per position of the guided logits (..., V), with this config's draw settings."""
        return draw_tokens(logits, self.temperature, self.top_k, self.top_p, generator)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **fields) -> "SamplingConfig":
        """The config of the flags added by add_sampling_args; `fields` set the fields whose flags were skipped
        (or replace those given)."""
        given = {field: getattr(args, dest) for field, (_, dest, _) in SAMPLING_FLAGS.items() if hasattr(args, dest)}
        return cls(**{**given, **fields})


# SamplingConfig field -> (flag, argparse dest, help). The flag names are the official scripts'.
SAMPLING_FLAGS = {
    "num_steps": ("--step", "step", "decoding steps"),
    "cfg_scale": ("--cfg-scale", "cfg_scale", "classifier-free guidance scale; 1 = no guidance"),
    "cfg_schedule": ("--cfg-schedule", "cfg_schedule", "how the guidance scale grows over the steps"),
    "sample_schedule": ("--sample-schedule", "sample_schedule", "how many tokens each step generates"),
    "temperature": ("--temperature", "temperature", "0 = greedy"),
    "top_k": ("--top-k", "top_k", "0 = no top-k filter"),
    "top_p": ("--top-p", "top_p", "1 = no nucleus filter"),
    "kv_cache": ("--kv-cache", "kv_cache", "how decoding stores keys and values: weights = the weights' dtype, "
                 "int8 or fp8 (float8 e4m3) = one-byte codes with a scale per vector (opt-in: half the cache "
                 "reads, tokens close to, not equal to, weights')"),
}
FIELD_CHOICES = {"cfg_schedule": CFG_SCHEDULES, "sample_schedule": SAMPLE_SCHEDULES, "kv_cache": tuple(KV_CACHE_DTYPES)}


def add_sampling_args(parser: argparse.ArgumentParser, skip: Sequence[str] = (), **defaults) -> argparse.ArgumentParser:
    """Add the sampling flags (--step, --cfg-scale, --cfg-schedule, --sample-schedule, --temperature,
    --top-k, --top-p, --kv-cache) to `parser`, defaulting to SamplingConfig's defaults; `defaults` overrides them
    by field name (num_steps=256, say); `skip` names fields a script sets itself (a sweep's cfg_scale). Read
    them back with SamplingConfig.from_args."""
    fields = {field.name: field for field in dataclasses.fields(SamplingConfig)}
    unknown = set(defaults) - set(fields)
    if unknown:
        raise TypeError(f"unknown sampling defaults {sorted(unknown)}; SamplingConfig has {sorted(fields)}")
    group = parser.add_argument_group("sampling")
    for name, (flag, dest, help_text) in SAMPLING_FLAGS.items():
        if name in skip:
            continue
        default = defaults.get(name, fields[name].default)
        choices = FIELD_CHOICES.get(name)
        kind = type(fields[name].default)
        if name == "kv_cache":
            kind = renamed_values(flag, RENAMED_KV_CACHES)
        group.add_argument(flag, dest=dest, type=kind, choices=choices, default=default,
                           help=f"{help_text} (default {default})")
    return parser


def masked_ratio(step: int, num_steps: int, schedule: str) -> float:
    """Fraction of tokens still masked after step `step` (0-based) of `num_steps`."""
    progress = 1.0 * (step + 1) / num_steps
    # numpy, as in the released sampler, so int(N * ratio) rounds the same way.
    if schedule == "arccos":
        return float(np.arccos(progress) / (math.pi * 0.5))
    if schedule == "cosine":
        return float(np.cos(math.pi / 2.0 * progress))
    raise ValueError(f"unknown sample schedule {schedule!r}; choose one of {SAMPLE_SCHEDULES}")


def step_sizes(num_tokens: int, num_steps: int, schedule: str) -> List[int]:
    """How many tokens each decoding step generates; the sizes sum to num_tokens.

    Every step but the last keeps at least one token masked; the last step generates the rest.
    """
    if not 1 <= num_steps <= num_tokens:
        raise UserError(f"num_steps must be in [1, {num_tokens}] for {num_tokens} tokens, got {num_steps}")
    sizes, done = [], 0
    for step in range(num_steps):
        if step == num_steps - 1:
            sizes.append(num_tokens - done)
            break
        kept_masked = max(1, min(num_tokens - done - 1, int(num_tokens * masked_ratio(step, num_steps, schedule))))
        sizes.append(num_tokens - done - kept_masked)
        done += sizes[-1]
    return sizes


def guidance_scale(cfg_scale: float, schedule: str, done_after: int, num_tokens: int) -> float:
    """Guidance scale of a step after which `done_after` of `num_tokens` tokens are generated."""
    if schedule == "linear":
        return 1.0 + (cfg_scale - 1.0) * done_after / num_tokens
    if schedule == "constant":
        return cfg_scale
    raise ValueError(f"unknown cfg schedule {schedule!r}; choose one of {CFG_SCHEDULES}")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf the logits outside the top-k and outside the top-p nucleus, on the last dim.

    Works on any leading shape, e.g. (B, n, V). The nucleus keeps the most likely tokens up to and
    including the first one at which the cumulative probability exceeds top_p.
    """
    if top_k > 0:
        kth_best = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_index = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # A token is dropped when the tokens ranked before it already exceed top_p.
        drop_sorted = torch.zeros_like(cumulative, dtype=torch.bool)
        drop_sorted[..., 1:] = cumulative[..., :-1] > top_p
        drop = drop_sorted.scatter(-1, sorted_index, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw_tokens(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Draw one token per position from logits (..., V); temperature 0 is greedy argmax."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    if temperature != 1.0:  # x / 1 is x: skipping it saves a copy of the logits (0.44 GiB, XXL batch 256)
        logits = logits / max(temperature, 1e-5)
    logits = filter_logits(logits, top_k, top_p)
    probs = logits.softmax(dim=-1)
    flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
    return flat.view(probs.shape[:-1])


def random_orders(batch_size: int, num_tokens: int, generator: Optional[torch.Generator] = None,
                  device=None) -> torch.Tensor:
    """(B, N) long: one random permutation of 0..N-1 per row."""
    if generator is not None:
        device = generator.device
    return torch.rand(batch_size, num_tokens, generator=generator, device=device).argsort(dim=1)


def batch_generator(device, global_seed: int, first_index: int) -> torch.Generator:
    """The randomness of a batch: a function of (global seed, index of its first sample) only."""
    return torch.Generator(device).manual_seed(global_seed * 1_000_003 + first_index)
