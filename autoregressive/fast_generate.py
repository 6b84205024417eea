"""A fast path for ARPG decoding on CUDA: the same computation as autoregressive/generate.py, replayed
from CUDA graphs.

For a given batch and step plan every step has known shapes: the tokens it feeds, the cache length it
reads and the targets it queries. So each step's network pass (embedding, all layers, head and the
guidance combination) is captured once as a CUDA graph over preallocated input buffers and the
preallocated KV cache, and replayed for every later batch with the same settings. Drawing the tokens
stays outside the graphs and uses the same calls as the reference loop, so with the same generator
the fast path returns the same tokens as the reference loop.
"""
import contextlib
from typing import List, Optional, Tuple, Union

import torch

from autoregressive.generate import DecodingStart, SamplingConfig, guide, start_decoding
from autoregressive.sampling import draw_tokens


@contextlib.contextmanager
def fused_layers(model, backend: str = "inductor"):
    """Inside, every decoder layer runs its cache-free parts (norms, projections, RoPE, residuals, FFN)
    through torch.compile (shape-generic), so each part is a few fused kernels instead of dozens. The
    arithmetic is the same, but fused kernels keep float32 where eager ops round to bf16 and reduce in
    another order: logits are close to, not equal to, the eager layers', and sampled tokens differ
    wherever two candidates nearly tie. Inductor is asked to round where eager does
    (emulate_precision_casts, where this torch has it), which on an H100 raised the share of greedy
    tokens equal to the eager loop's from 64% to 81% (ARPG-L, random weights) at the same speed. The
    kernels are shape-generic, so the reference loop run inside this context gives the fast path's
    tokens exactly. Compiled once per process and model. backend="eager" runs the same plumbing
    uncompiled (tests)."""
    layers = [*model.layers.self_dec, *model.layers.cross_dec]
    for layer in layers:
        compiled = getattr(layer, "compiled_parts", {})
        if backend not in compiled:
            compiled[backend] = (torch.compile(layer.before_attention, dynamic=True, backend=backend),
                                 torch.compile(layer.after_attention, dynamic=True, backend=backend))
            layer.compiled_parts = compiled
        layer.fused = compiled[backend]
    inductor = torch._inductor.config
    rounding = (inductor.patch(emulate_precision_casts=True) if hasattr(inductor, "emulate_precision_casts")
                else contextlib.nullcontext())
    try:
        with rounding:  # compilation happens on the first calls, inside this context
            yield
    finally:
        for layer in layers:
            layer.fused = None


def fusion(model, fuse: Union[bool, str]):
    """The context a `fuse` setting asks for: nothing (False), fused_layers with inductor (True), or
    fused_layers with the named torch.compile backend."""
    if not fuse:
        return contextlib.nullcontext()
    return fused_layers(model, fuse if isinstance(fuse, str) else "inductor")


class GraphedSteps:
    """The CUDA graphs of every step of one plan for one batch size; reusable across batches.

    use_graphs=False runs the same steps on the same static buffers eagerly (on the CPU, say), which
    is how the tests check the buffer bookkeeping against the reference loop. fuse=True compiles the
    layers' cache-free parts (see fused_layers): faster, no longer bitwise equal to the reference loop;
    fuse="eager" runs that plumbing uncompiled.
    """

    def __init__(self, model, batch_size: int, first_fed: int, plan: List[int], sampling: SamplingConfig,
                 use_graphs: bool = True, fuse: Union[bool, str] = False):
        self.model, self.plan, self.sampling, self.fuse = model, plan, sampling, fuse
        self.batch_size, self.first_fed = batch_size, first_fed
        self.copies = 2 if sampling.uses_guidance else 1
        rows, device = self.copies * batch_size, model.embeddings.weight.device
        max_fed = max(first_fed, max(plan))
        self.fed_ids = torch.zeros(rows, max_fed, dtype=torch.long, device=device)
        self.fed_slots = torch.zeros(rows, max_fed, dtype=torch.long, device=device)
        self.query_slots = torch.zeros(rows, max(plan), dtype=torch.long, device=device)
        self.cache = model.new_cache(rows, first_fed + sum(plan[:-1]))
        # One output buffer for all steps: step outputs held in the graph pool would never be reused.
        self.guided_logits = torch.zeros(batch_size, max(plan), model.config.vocab_size, device=device)
        self.graphs: List[torch.cuda.CUDAGraph] = []
        if use_graphs:
            self._capture()

    def _step(self, step: int) -> None:
        """One network pass on the static buffers, into guided_logits[:, :plan[step]] (float32)."""
        with fusion(self.model, self.fuse):
            self._network_pass(step)

    def _network_pass(self, step: int) -> None:
        num_fed = self.first_fed if step == 0 else self.plan[step - 1]
        size = self.plan[step]
        self.cache.length = self.first_fed * (step > 0) + sum(self.plan[:max(step - 1, 0)])
        # The first step's known tokens (editing) enter the cache causally, as in generate().
        causal = step == 0 and self.first_fed > self.model.config.cls_token_num
        logits = self.model.decode(self.fed_ids[:, :num_fed], self.fed_slots[:, :num_fed],
                                   self.query_slots[:, :size], causal=causal, cache=self.cache)
        num_generated = sum(self.plan)
        self.guided_logits[:, :size].copy_(guide(logits, self.sampling, sum(self.plan[:step + 1]), num_generated))

    def _capture(self) -> None:
        # Warm up on a side stream (cuBLAS and attention pick their kernels), then capture each step
        # into one shared memory pool: steps replay in capture order, so they can reuse its memory.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for step in range(len(self.plan)):
                self._step(step)
        torch.cuda.current_stream().wait_stream(side)
        pool = torch.cuda.graph_pool_handle()
        with torch.inference_mode():
            for step in range(len(self.plan)):
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self._step(step)
                self.graphs.append(graph)

    @torch.inference_mode()
    def run(self, start: DecodingStart, target_slots: torch.Tensor, sampling: SamplingConfig,
            generator) -> torch.Tensor:
        """target_slots (B, M) slots to generate; returns their (B, M) tokens in generation order.
        The graphs hold the guidance (cfg_scale, cfg_schedule); the draws (temperature, top-k, top-p)
        follow `sampling`, which may differ from the config the graphs were captured with."""
        tokens = torch.empty_like(target_slots)
        self.fed_ids[:, :self.first_fed].copy_(start.fed_ids)
        self.fed_slots[:, :self.first_fed].copy_(start.fed_slots)
        done = 0
        for step, size in enumerate(self.plan):
            self.query_slots[:, :size].copy_(target_slots[:, done:done + size].repeat(self.copies, 1))
            if self.graphs:
                self.graphs[step].replay()
            else:
                self._step(step)
            logits = self.guided_logits[:, :size]
            sampled = draw_tokens(logits, sampling.temperature, sampling.top_k, sampling.top_p, generator)
            tokens[:, done:done + size] = sampled
            done += size
            self.fed_ids[:, :size].copy_(sampled.repeat(self.copies, 1))
            self.fed_slots[:, :size].copy_(self.query_slots[:, :size])
        return tokens


class FastSampler:
    """Generates like autoregressive.generate.generate, from CUDA graphs kept for the last settings.
    fuse=True: also compile the layers (fused_layers): faster; equal to the reference loop run inside
    fused_layers, close to (not equal to) the eager one.

    Graphs point at the model's weights: build a new sampler after moving or casting the model.
    """

    def __init__(self, model, use_graphs: bool = True, fuse: Union[bool, str] = False):
        self.model = model
        self.use_graphs, self.fuse = use_graphs, fuse
        self._steps: Optional[GraphedSteps] = None
        self._key: Optional[Tuple] = None

    def _graphed_steps(self, batch_size: int, start: DecodingStart, sampling: SamplingConfig) -> GraphedSteps:
        first_fed = start.fed_ids.shape[1]
        key = (batch_size, first_fed, tuple(start.plan), sampling.cfg_scale, sampling.cfg_schedule)
        if key != self._key:
            self._steps = None  # free the old cache and graphs before allocating new ones
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self._steps = GraphedSteps(self.model, batch_size, first_fed, start.plan, sampling, self.use_graphs,
                                       self.fuse)
            self._key = key
        return self._steps

    @torch.inference_mode()
    def generate(self, condition: torch.Tensor, sampling: Optional[SamplingConfig] = None,
                 orders: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                 known: Optional[torch.Tensor] = None, known_mask: Optional[torch.Tensor] = None,
                 **sampling_kwargs) -> torch.Tensor:
        """Same arguments and result as autoregressive.generate.generate."""
        sampling = sampling or SamplingConfig(**sampling_kwargs)
        start = start_decoding(self.model, condition, sampling, orders, generator, known, known_mask)
        target_positions = start.orders[:, start.num_known:]
        steps = self._graphed_steps(condition.shape[0], start, sampling)
        tokens = steps.run(start, target_positions + self.model.config.cls_token_num, sampling, generator)
        out = known.clone() if known is not None else torch.empty_like(start.orders)
        return out.scatter_(1, target_positions, tokens)
