"""A fast path for ARPG decoding on CUDA: the same computation as autoregressive/generate.py, replayed
from CUDA graphs.

For a given batch and step plan every step has known shapes: the tokens it feeds, the cache length it
reads and the targets it queries. So each step's network pass (embedding, all layers, head and the
guidance combination) is captured once as a CUDA graph over preallocated input buffers and the
preallocated KV cache, and replayed for every later batch with the same settings. Drawing the tokens
stays outside the graphs and uses the same calls as the reference loop, so with the same generator
the fast path returns the same tokens as the reference loop.
"""
from typing import List, Optional, Tuple

import torch

from autoregressive.generate import SamplingConfig, check_class_ids, prepare_orders
from autoregressive.sampling import draw_tokens, guidance_scale, step_sizes


class GraphedSteps:
    """The CUDA graphs of every step of one plan for one batch size; reusable across batches.

    use_graphs=False runs the same steps on the same static buffers eagerly (on the CPU, say), which
    is how the tests check the buffer bookkeeping against the reference loop.
    """

    def __init__(self, model, batch_size: int, plan: List[int], sampling: SamplingConfig, use_graphs: bool = True):
        config = model.config
        self.model, self.plan, self.sampling = model, plan, sampling
        self.batch_size = batch_size
        self.rows = 2 * batch_size if sampling.uses_guidance else batch_size
        device = model.embeddings.weight.device
        max_fed = max(config.cls_token_num, max(plan))
        self.fed_ids = torch.zeros(self.rows, max_fed, dtype=torch.long, device=device)
        self.fed_slots = torch.zeros(self.rows, max_fed, dtype=torch.long, device=device)
        self.query_slots = torch.zeros(self.rows, max(plan), dtype=torch.long, device=device)
        self.cache = model.new_cache(self.rows)
        # One output buffer for all steps: step outputs held in the graph pool would never be reused.
        self.guided_logits = torch.zeros(batch_size, max(plan), config.vocab_size, device=device)
        self.graphs: List[torch.cuda.CUDAGraph] = []
        if use_graphs:
            self._capture()

    def _fed_count(self, step: int) -> int:
        return self.model.config.cls_token_num if step == 0 else self.plan[step - 1]

    def _cached_before(self, step: int) -> int:
        return self.model.config.cls_token_num * (step > 0) + sum(self.plan[:max(step - 1, 0)])

    def _step(self, step: int) -> None:
        """One network pass on the static buffers, into guided_logits[:, :plan[step]] (float32)."""
        num_fed, size = self._fed_count(step), self.plan[step]
        self.cache.length = self._cached_before(step)
        logits = self.model.decode(self.fed_ids[:, :num_fed], self.fed_slots[:, :num_fed],
                                   self.query_slots[:, :size], causal=False, cache=self.cache)
        if self.sampling.uses_guidance:
            done_after = sum(self.plan[:step + 1])
            scale = guidance_scale(self.sampling.cfg_scale, self.sampling.cfg_schedule, done_after,
                                   self.model.config.block_size)
            cond, uncond = logits.chunk(2)
            logits = uncond + (cond - uncond) * scale
        self.guided_logits[:, :size].copy_(logits)

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
    def run(self, class_ids: torch.Tensor, target_slots: torch.Tensor, generator) -> torch.Tensor:
        """class_ids (rows, C) first-step tokens; target_slots (B, N). Returns (B, N) in generation order."""
        sampling, batch = self.sampling, self.batch_size
        tokens = torch.empty(batch, target_slots.shape[1], dtype=torch.long, device=target_slots.device)
        num_class = class_ids.shape[1]
        self.fed_ids[:, :num_class].copy_(class_ids)
        self.fed_slots[:, :num_class].copy_(self.model.class_slots(self.rows, class_ids.device))
        done = 0
        for step, size in enumerate(self.plan):
            query_slots = target_slots[:, done:done + size]
            self.query_slots[:, :size].copy_(query_slots.repeat(self.rows // batch, 1))
            if self.graphs:
                self.graphs[step].replay()
            else:
                self._step(step)
            logits = self.guided_logits[:, :size]
            sampled = draw_tokens(logits, sampling.temperature, sampling.top_k, sampling.top_p, generator)
            tokens[:, done:done + size] = sampled
            done += size
            self.fed_ids[:, :size].copy_(sampled.repeat(self.rows // batch, 1))
            self.fed_slots[:, :size].copy_(self.query_slots[:, :size])
        return tokens


class FastSampler:
    """Generates like autoregressive.generate.generate, from CUDA graphs kept for the last settings.

    Graphs point at the model's weights: build a new sampler after moving or casting the model.
    """

    def __init__(self, model, use_graphs: bool = True):
        self.model = model
        self.use_graphs = use_graphs
        self._steps: Optional[GraphedSteps] = None
        self._key: Optional[Tuple] = None

    def _graphed_steps(self, batch_size: int, plan: List[int], sampling: SamplingConfig) -> GraphedSteps:
        key = (batch_size, tuple(plan), sampling.uses_guidance, sampling.cfg_scale, sampling.cfg_schedule)
        if key != self._key:
            self._steps = None  # free the old cache and graphs before allocating new ones
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self._steps = GraphedSteps(self.model, batch_size, plan, sampling, self.use_graphs)
            self._key = key
        return self._steps

    @torch.inference_mode()
    def generate(self, condition: torch.Tensor, sampling: Optional[SamplingConfig] = None,
                 orders: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                 **sampling_kwargs) -> torch.Tensor:
        """Same arguments and result as autoregressive.generate.generate."""
        sampling = sampling or SamplingConfig(**sampling_kwargs)
        config = self.model.config
        check_class_ids(condition, config.num_classes)
        batch, num_tokens, device = condition.shape[0], config.block_size, condition.device
        orders = prepare_orders(orders, batch, num_tokens, generator, device)
        plan = step_sizes(num_tokens, sampling.num_steps, sampling.sample_schedule)
        steps = self._graphed_steps(batch, plan, sampling)
        class_ids = self.model.class_token_ids(condition)
        if sampling.uses_guidance:
            class_ids = torch.cat([class_ids, torch.full_like(class_ids, config.null_class_id)])
        tokens = steps.run(class_ids, orders + config.cls_token_num, generator)
        return torch.empty_like(tokens).scatter_(1, orders, tokens)
