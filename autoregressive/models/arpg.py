"""ARPG: autoregressive image generation with randomized parallel decoding (arXiv 2503.10568).

A two-pass decoder. Self-attention layers read the known tokens (class token first) causally in
generation order; their output gives one shared key/value set. Guided cross-attention layers are
queried by [MASK] embeddings rotated with the 2-D RoPE of the *target* positions, so the model predicts
the token at any position given any set of known ones.

Quirks of the released checkpoints that we reproduce on purpose (each is what the weights expect):
- One embedding table for everything: rows [0, V) image tokens, V the [MASK] token, V+1+c class c,
  V+K+1 the "no class" token of classifier-free guidance, V+K+2 an unused row (V vocab, K classes).
- The RoPE rows of the class token are zeros, so its rotated query and key are exactly zero: other
  tokens attend to it with score 0 and it reaches them only through its value.
- Keys of the shared cross-attention set are rotated, values are not; queries of every cross layer are
  rotated with the target positions. Rotation runs in float32 and casts back.
- RMSNorm normalises in float32; the head's logits are returned in float32.
- At inference the tokens fed in one step (those sampled together in the previous step) see each other
  in the self-attention layers; training is causal in generation order (see autoregressive/generate.py).
- SwiGLU width: 2/3 * 4 * dim rounded up to a multiple of 256; the head starts at zero.

Not in the release: `learned_pos_embed` adds a learned absolute embedding to each known token and each
target query. The relative RoPE alone makes the model translation invariant, which is fatal on tiny
centred images (the 8x8 digits demo); it is off for ARPG-L/XL/XXL so their state dicts stay official.
Nor is `condition_vocab_size` (controllable generation, models/condition.py), off by default too.
"""
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from autoregressive.kernels import quack_mlp
from autoregressive.models.attention import CrossAttention, SelfAttention, merge_heads, split_heads
from autoregressive.models.condition import target_queries, teacher_forced_conditions
from autoregressive.models.config import ARPGConfig
from autoregressive.models.kv_cache import KVCache
from autoregressive.models.loss import chunked_cross_entropy
from autoregressive.models.official_names import keep_official_names
from autoregressive.models.rope import apply_rope, rope_table_2d


class RMSNorm(nn.Module):
    def __init__(self, config: ARPGConfig):
        super().__init__()
        self.eps = config.norm_eps
        self.weight = nn.Parameter(torch.ones(config.dim))

    def forward(self, x):
        # Normalised in float32 and rounded to x's dtype once, as released; then scaled in x's dtype.
        return F.rms_norm(x, (x.shape[-1],), eps=self.eps) * self.weight


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), with w1 and w3 stored as one matrix `w13`."""

    def __init__(self, config: ARPGConfig):
        super().__init__()
        self.w13 = nn.Linear(config.dim, 2 * config.ffn_hidden, bias=False)
        self.w2 = nn.Linear(config.ffn_hidden, config.dim, bias=False)
        self.mlp_kernel = config.mlp_kernel  # "quack": quack_mlp in training mode (ARPGConfig.mlp_kernel)
        keep_official_names(self, "w13", ("w1", "w3"))

    def forward(self, x):
        if self.mlp_kernel == "quack" and self.training:
            return quack_mlp.swiglu_mlp(x, self.w13.weight, self.w2.weight)
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    """Pre-norm block: x + proj(attn(norm(x))), then + ffn(norm(.)), with residual dropout; `drop_path`
    (identity by default) wraps both residual branches.

    Split in three for decoding: `before_attention` (norm, projections, RoPE, and a self-attention layer's
    writes into a cache in the weights' dtype: SelfAttention.cache_slot) and `after_attention` (output
    projection, residuals, FFN), so a caller may pass compiled versions of them (`parts`, see
    autoregressive/fast_generate.py); the attention stays between them.
    recompute: recomputed in the backward pass (training memory, see ARPGConfig.grad_checkpointing).
    """

    def __init__(self, config: ARPGConfig, attention: nn.Module, recompute: bool = False,
                 drop_path: Optional[nn.Module] = None):
        super().__init__()
        self.attn = attention
        self.drop_path = drop_path or nn.Identity()  # holds no tensors: the state dict is unchanged
        self.ffn = FeedForward(config)
        self.attn_norm = RMSNorm(config)
        self.ffn_norm = RMSNorm(config)
        self.resid_dropout_p = config.resid_dropout_p
        self.ffn_dropout_p = config.ffn_dropout_p
        self.recompute = recompute

    def before_attention(self, x, rope, *cache_slot):
        return self.attn.project(self.attn_norm(x), rope, *cache_slot)

    def after_attention(self, x, attended, training: bool):
        h = x + self.drop_path(F.dropout(self.attn.proj(merge_heads(attended)), self.resid_dropout_p, training))
        return h + self.drop_path(F.dropout(self.ffn(self.ffn_norm(h)), self.ffn_dropout_p, training))

    def forward(self, x, training: bool, rope, parts=None, **attn_kwargs):
        before, after = parts or (self.before_attention, self.after_attention)
        projected = before(x, rope, *self.attn.cache_slot(x, **attn_kwargs))
        return after(x, self.attn.attend(projected, **attn_kwargs), training)


class TwoPassDecoder(nn.Module):
    """Self-attention layers over the known tokens, then cross-attention layers over their shared K/V.

    drop_path_layer: rate -> module dropping a residual branch per sample (timm's DropPath); layer i in
    compute order gets rate drop_path_rate * i / (n_layer - 1), as LlamaGen's GPT spaces them.
    """

    def __init__(self, config: ARPGConfig, drop_path_layer: Optional[Callable[[float], nn.Module]] = None):
        super().__init__()
        self.n_head = config.n_head
        self.attn_dropout_p = config.attn_dropout_p
        num_each, recompute, dim, heads = config.n_layer // 2, config.checkpoints_layer, config.dim, config.n_head
        if config.drop_path_rate > 0 and drop_path_layer is None:
            raise ValueError("drop_path_rate > 0 needs a drop_path_layer, e.g. timm.layers.DropPath")
        rates = [config.drop_path_rate * i / max(config.n_layer - 1, 1) for i in range(config.n_layer)]
        drop = [drop_path_layer(rate) if rate > 0 else None for rate in rates]
        self.self_dec = nn.ModuleList([DecoderLayer(config, SelfAttention(dim, heads), recompute(i), drop[i])
                                       for i in range(num_each)])
        self.cross_dec = nn.ModuleList([DecoderLayer(config, CrossAttention(dim, heads), recompute(num_each + i),
                                                     drop[num_each + i])
                                        for i in range(num_each)])
        self.norm = RMSNorm(config)
        self.to_kv = nn.Linear(config.dim, 2 * config.dim, bias=False)  # the shared set's to_k, to_v
        keep_official_names(self, "to_kv", ("to_k", "to_v"))

    def forward(self, x, queries, known_rope, query_rope, causal: bool, training: bool,
                cache: Optional[KVCache] = None, layer_parts=None):
        """x (B, n, D) known tokens; queries (B, m, D) [MASK] stream. Returns (B, m, D).

        causal: the known tokens attend causally among themselves (always to the cached ones).
        layer_parts: None, or each layer's (before_attention, after_attention) in compute order.
        """
        attn_p = self.attn_dropout_p if training else 0.0
        parts = layer_parts or [None] * (len(self.self_dec) + len(self.cross_dec))
        for i, layer in enumerate(self.self_dec):
            x = self.run(layer, x, training, rope=known_rope, parts=parts[i], causal=causal, dropout_p=attn_p,
                         cache=cache, cache_index=i)
        k, v = (split_heads(part, self.n_head) for part in self.to_kv(self.norm(x)).chunk(2, dim=-1))
        k, v = apply_rope(k, known_rope).transpose(1, 2), v.transpose(1, 2)  # (B, H, n, d)
        if cache is not None:
            k, v = cache.write(len(self.self_dec), k, v)
            cache.advance(x.shape[1])
        # Targets see the known tokens before them only in teacher forcing; at inference the
        # queries of a step see every cached token.
        cross_causal = causal and cache is None
        for i, layer in enumerate(self.cross_dec, start=len(self.self_dec)):
            queries = self.run(layer, queries, training, rope=query_rope, parts=parts[i], k=k, v=v,
                               causal=cross_causal, dropout_p=attn_p)
        return queries

    def run(self, layer: nn.Module, x, training: bool, **kwargs):
        """One layer, recomputed in the backward pass if the config says so (training only)."""
        if training and layer.recompute and torch.is_grad_enabled():
            return checkpoint(layer, x, training, use_reentrant=False, **kwargs)
        return layer(x, training, **kwargs)


class ARPG(nn.Module):
    """The ARPG transformer. Positions are handled as *slots*: 0..C-1 the class tokens, C + p image
    position p (raster order). Slots index the RoPE table and, when enabled, the position embedding.
    drop_path_layer: see TwoPassDecoder (training with config.drop_path_rate > 0 only)."""

    def __init__(self, config: ARPGConfig, drop_path_layer: Optional[Callable[[float], nn.Module]] = None):
        super().__init__()
        self.config = config
        self.embeddings = nn.Embedding(config.embedding_rows, config.dim)
        if config.learned_pos_embed:
            self.pos_embeddings = nn.Embedding(config.block_size, config.dim)
        if config.condition_vocab_size:
            self.condition_embeddings = nn.Embedding(config.condition_vocab_size + 1, config.dim)
        self.layers = TwoPassDecoder(config, drop_path_layer)
        self.norm = RMSNorm(config)
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)
        # A plain attribute, not a buffer: it stays float32 when the model is cast to bf16, and out of
        # the state dict, which must hold exactly the released names.
        self.rope_cpu = rope_table_2d(config.grid_size, config.head_dim, config.rope_base, config.cls_token_num)
        self._rope_on_device = {}
        self.initialize_weights()

    def initialize_weights(self):
        """Normal(0, initializer_range) for linear and embedding weights; the output head starts at zero."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        nn.init.zeros_(self.head.weight)

    def rope(self, slots: torch.Tensor) -> torch.Tensor:
        """(B, n) long slots -> (B, n, head_dim // 2, 2) float32 (cos, sin) rotations."""
        table = self._rope_on_device.get(slots.device)
        if table is None:
            table = self._rope_on_device[slots.device] = self.rope_cpu.to(slots.device)
        return table[slots]

    def embed(self, token_ids: torch.Tensor, slots: torch.Tensor, table: Optional[nn.Embedding] = None):
        """Embed (B, n) ids of `table` (default: the tokens') at (B, n) slots; class slots get no position."""
        x = (self.embeddings if table is None else table)(token_ids)
        if self.config.learned_pos_embed:
            image_pos = (slots - self.config.cls_token_num).clamp(min=0)
            is_image = (slots >= self.config.cls_token_num).unsqueeze(-1)
            x = x + self.pos_embeddings(image_pos) * is_image
        return x

    def class_token_ids(self, condition: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        """(B,) class ids -> (B, C) embedding rows, each label dropped to "no class" with drop_prob."""
        ids = condition.long() + self.config.vocab_size + 1
        if drop_prob > 0:
            dropped = torch.rand(ids.shape, device=ids.device) < drop_prob
            ids = torch.where(dropped, torch.full_like(ids, self.config.null_class_id), ids)
        return ids.unsqueeze(1).expand(-1, self.config.cls_token_num)

    def class_slots(self, batch_size: int, device) -> torch.Tensor:
        return torch.arange(self.config.cls_token_num, device=device).expand(batch_size, -1)

    def decode_features(self, known_ids, known_slots, query_slots, causal: bool, training: bool = False,
                        cache: Optional[KVCache] = None, layer_parts=None, query_conditions=None):
        """Normalised features (B, m, D) of the targets at query_slots (B, m), given the known tokens
        known_ids (B, n) at known_slots (B, n) (plus whatever `cache` already holds). layer_parts: each
        layer's (before_attention, after_attention) to run instead of its own, e.g. compiled ones.
        query_conditions: (B, m) condition ids of the targets (condition models only)."""
        x = self.embed(known_ids, known_slots)
        x = F.dropout(x, self.config.token_dropout_p, training)
        queries = target_queries(self, query_slots, query_conditions)
        out = self.layers(x, queries, self.rope(known_slots), self.rope(query_slots), causal, training, cache,
                          layer_parts)
        return self.norm(out)

    def decode(self, known_ids, known_slots, query_slots, causal: bool, training: bool = False,
               cache: Optional[KVCache] = None, layer_parts=None, query_conditions=None):
        """Logits (B, m, V) float32; the arguments of decode_features."""
        features = self.decode_features(known_ids, known_slots, query_slots, causal, training, cache, layer_parts,
                                        query_conditions)
        return self.head(features).float()

    def forward(self, input_ids, condition, targets=None, orders=None, return_logits: bool = True,
                condition_map=None) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Teacher forcing in a random order.

        input_ids (B, N) long image tokens in raster order; condition (B,) long class ids;
        targets (B, N) long in raster order or None; orders (B, N) long, each row a permutation of
        0..N-1 (None: a fresh random one per row). Returns logits (B, N, V) in generation order
        (logits[b, i] predicts input_ids[b, orders[b, i]] from the class and input_ids[b, orders[b, :i]])
        and the mean cross-entropy against targets (None without targets). return_logits=False (with
        targets): the loss is computed chunk by chunk without keeping the logits, which come back None.
        condition_map: (B, N) long condition ids in raster order (condition models; None: no condition).
        """
        batch, num_tokens = input_ids.shape
        if orders is None:
            orders = torch.rand(batch, num_tokens, device=input_ids.device).argsort(dim=1)
        input_ids, orders = input_ids.long(), orders.long().to(input_ids.device)
        targets = targets.long() if targets is not None else None
        drop_prob = self.config.class_dropout_prob if self.training else 0.0
        class_ids = self.class_token_ids(condition, drop_prob)  # (B, C)
        ordered_ids = input_ids.gather(1, orders)  # (B, N) in generation order
        target_slots = orders + self.config.cls_token_num  # (B, N)
        known_ids = torch.cat([class_ids, ordered_ids[:, :-1]], dim=1)  # (B, C + N - 1)
        known_slots = torch.cat([self.class_slots(batch, input_ids.device), target_slots[:, :-1]], dim=1)
        query_conditions = teacher_forced_conditions(self.config, condition_map, orders, class_ids[:, 0], self.training)
        features = self.decode_features(known_ids, known_slots, target_slots, causal=True, training=self.training,
                                        query_conditions=query_conditions)
        if targets is None or return_logits:
            logits = self.head(features).float()
            return logits, None if targets is None else F.cross_entropy(logits.flatten(0, 1),
                                                                         targets.gather(1, orders).reshape(-1))
        # the head's mean cross-entropy without keeping the logits (models/loss.py)
        return None, chunked_cross_entropy(features.flatten(0, 1), self.head.weight,
                                           targets.gather(1, orders).reshape(-1))

    def new_cache(self, batch_size: int, max_len: Optional[int] = None, dtype: Optional[torch.dtype] = None) -> KVCache:
        """An empty cache for batch_size rows and max_len tokens (default: class tokens + every image token),
        stored in `dtype` (default: the weights'; torch.int8 or torch.float8_e4m3fn: a quantised cache, see
        KVCache)."""
        weight, config = self.embeddings.weight, self.config
        return KVCache(len(self.layers.self_dec) + 1, batch_size, config.n_head, max_len or config.cls_token_num
                       + config.block_size, config.head_dim, dtype or weight.dtype, weight.device)

    def generate(self, condition, **options) -> torch.Tensor:
        """Sample (B, N) long tokens in raster order for (B,) class ids by autoregressive/generate.py's reference
        loop; options: its keywords (orders, generator, known, ...) and SamplingConfig's fields."""
        from autoregressive.generate import generate  # the loop is not part of the network
        return generate(self, condition, **options)


def ARPG_L(drop_path_layer=None, **overrides):
    return ARPG(ARPGConfig(**{"dim": 1024, "n_layer": 24, "n_head": 16, **overrides}), drop_path_layer)


def ARPG_XL(drop_path_layer=None, **overrides):
    return ARPG(ARPGConfig(**{"dim": 1280, "n_layer": 36, "n_head": 20, **overrides}), drop_path_layer)


def ARPG_XXL(drop_path_layer=None, **overrides):
    return ARPG(ARPGConfig(**{"dim": 1536, "n_layer": 48, "n_head": 24, **overrides}), drop_path_layer)


def ARPG_tiny(drop_path_layer=None, **overrides):
    """For tests: 2 + 2 layers, dim 64."""
    return ARPG(ARPGConfig(**{"dim": 64, "n_layer": 4, "n_head": 4, "multiple_of": 32, **overrides}), drop_path_layer)


def ARPG_digits(drop_path_layer=None, **overrides):
    """The CPU demo on 8x8 digits: ~0.2 M parameters, learned absolute positions."""
    defaults = {"dim": 64, "n_layer": 4, "n_head": 4, "multiple_of": 32, "vocab_size": 17, "num_classes": 10,
                "block_size": 64, "learned_pos_embed": True}
    return ARPG(ARPGConfig(**{**defaults, **overrides}), drop_path_layer)


ARPG_models = {
    "ARPG-L": ARPG_L,
    "ARPG-XL": ARPG_XL,
    "ARPG-XXL": ARPG_XXL,
    "ARPG-tiny": ARPG_tiny,
    "ARPG-digits": ARPG_digits,
}
