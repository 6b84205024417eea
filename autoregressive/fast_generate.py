"""The CUDA-graph path of ARPG decoding, and the choice between it and the reference loop.

The loop is autoregressive/generate.py's `generate`; this path only swaps its step runner. For a
given batch and step plan every DecodingStep has known shapes (tokens fed, cache length, targets), so
each step's network pass, `decode_step` (embedding, all layers, head and the guidance combination), is
captured once as a CUDA graph over static input buffers and the preallocated KV cache, and replayed for
every later batch with the same settings. Drawing the tokens stays outside the graphs, in the shared
loop, so with the same generator the fast path returns the reference loop's tokens.
"""
import contextlib
import types
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch

from autoregressive.generate import DecodingStart, DecodingStep, EagerSteps, decode_step, generate
from autoregressive.models.kv_cache import KVCache
from autoregressive.sampling import SamplingConfig
from autoregressive.utils.device import repeatable_compile_options

LayerParts = List[Tuple[Callable, Callable]]


def _before_attention(layer, x, rope, *cache_slot):
    return layer.before_attention(x, rope, *cache_slot)


def _after_attention(layer, x, attended, training: bool):
    return layer.after_attention(x, attended, training)


# One function object per kind of part, shared by every model and sampler of the process (see compiled_part).
_compiled_parts: Dict[Tuple, Callable] = {}


def part_kind(layer, part: Callable, backend: str, has_cache_slot: bool = False) -> Tuple:
    """What a compiled part's code is specialised on: the layer's attention type, its parameters' shapes,
    dtypes and device, whether it writes a cache slot, and the backend. Batch and sequence sizes are
    left out: they are dynamic."""
    weights = tuple((name, tuple(p.shape), p.dtype, p.device.type) for name, p in layer.named_parameters())
    return part.__name__, type(layer.attn).__name__, type(layer.drop_path).__name__, weights, has_cache_slot, backend


def compiled_part(kind: Tuple, part: Callable, backend: str) -> Callable:
    """torch.compile of `part` with a code object of its own for this kind. Dynamo keeps its compiled
    entries, and counts them against its recompile limit, per code object: with one code object for
    every layer kind, model size and cache option, a process that samples two models (or a quantised
    and a plain cache) ran out of that limit and fell back to eager layers. Here each kind compiles
    once per shape (a sequence of one token, and any other length). Inductor compiles it in its
    deterministic mode, so every process samples the same tokens (as the VQ decoder, weights.py)."""
    if kind not in _compiled_parts:
        code = part.__code__.replace(co_name=f"{part.__name__}_{len(_compiled_parts)}")
        copy = types.FunctionType(code, part.__globals__, code.co_name)
        options = repeatable_compile_options() if backend == "inductor" else None
        _compiled_parts[kind] = torch.compile(copy, dynamic=True, backend=backend, options=options)
    return _compiled_parts[kind]


def compiled_layer_parts(model, backend: str = "inductor") -> LayerParts:
    """Each decoder layer's cache-free parts (norms, projections, RoPE, residuals, FFN) through
    torch.compile (shape-generic), in compute order, to pass as ARPG.decode's layer_parts: each part is
    a few fused kernels instead of dozens. The arithmetic is the same, but fused kernels keep float32
    where eager ops round to bf16 and reduce in another order: logits are close to, not equal to, the
    eager layers', and sampled tokens differ wherever two candidates nearly tie (run them inside
    compiling_parts). Shape-generic, so the reference loop with these parts gives the fast path's tokens
    exactly. backend="eager" runs the same plumbing uncompiled (tests)."""
    return [layer_parts(layer, backend) for layer in [*model.layers.self_dec, *model.layers.cross_dec]]


def layer_parts(layer, backend: str) -> Tuple[Callable, Callable]:
    """One layer's (before_attention, after_attention) through the compiled parts of its kind; a
    quantised cache passes no cache slot, which is another kind of before_attention."""
    after = compiled_part(part_kind(layer, _after_attention, backend), _after_attention, backend)
    before = {}  # has a cache slot -> compiled part, made on first use (cross-attention never has one)

    def run_before(x, rope, *cache_slot):
        has_slot = bool(cache_slot)
        if has_slot not in before:
            before[has_slot] = compiled_part(part_kind(layer, _before_attention, backend, has_slot), _before_attention,
                                             backend)
        return before[has_slot](layer, x, rope, *cache_slot)

    def run_after(x, attended, training: bool):
        return after(layer, x, attended, training)
    return run_before, run_after


@contextlib.contextmanager
def compiling_parts(layer_parts: Optional[LayerParts]):
    """The compiler settings that calls of compiled layer parts run under (a part compiles again at any
    new shape, so every call must run inside; entered once per decoding, not per call):
    - sizes that happen to be equal when a part is traced (rows of the batch and heads, say) stay separate
      symbols: otherwise the batch is fixed to the head count and every other batch size compiles again;
    - inductor rounds where eager ops do (emulate_precision_casts, where this torch has it), which brings
      the fused tokens closer to the eager ones at the same speed (see docs/numerics.md)."""
    with contextlib.ExitStack() as settings:
        shapes, inductor = torch.fx.experimental._config, torch._inductor.config
        if layer_parts and hasattr(shapes, "use_duck_shape"):  # older torch lacks these
            settings.enter_context(shapes.patch(use_duck_shape=False))
        if layer_parts and hasattr(inductor, "emulate_precision_casts"):
            settings.enter_context(inductor.patch(emulate_precision_casts=True))
        yield


def layer_parts_for(model, compile_layers: Union[bool, str]) -> Optional[LayerParts]:
    """The layer parts a `compile_layers` setting asks for: none (False), compiled with inductor (True), or
    compiled with the named torch.compile backend."""
    if not compile_layers:
        return None
    return compiled_layer_parts(model, compile_layers if isinstance(compile_layers, str) else "inductor")


class GraphedSteps:
    """A step runner for `generate`: the CUDA graphs of every step of one decoding layout (batch size
    and steps), reusable across batches.

    use_graphs=False runs the same steps on the same static buffers eagerly (on the CPU, say), which
    is how the tests check the buffer bookkeeping against the reference loop.
    """

    def __init__(self, model, start: DecodingStart, use_graphs: bool = True,
                 layer_parts: Optional[LayerParts] = None):
        self.model, self.steps, self.layer_parts = model, start.steps, layer_parts
        rows, batch, device = start.fed_ids.shape[0], start.orders.shape[0], start.fed_ids.device
        max_fed, max_size = max(step.fed for step in self.steps), max(step.size for step in self.steps)
        self.fed_ids = torch.zeros(rows, max_fed, dtype=torch.long, device=device)
        self.fed_slots = torch.zeros(rows, max_fed, dtype=torch.long, device=device)
        self.query_slots = torch.zeros(rows, max_size, dtype=torch.long, device=device)
        self.query_conditions = None  # the targets' condition ids, for a decoding with a condition map
        if start.target_conditions is not None:
            self.query_conditions = torch.zeros(rows, max_size, dtype=torch.long, device=device)
        self.cache = model.new_cache(rows, start.cache_capacity, start.cache_dtype)
        # One output buffer for all steps: step outputs held in the graph pool would never be reused.
        self.guided_logits = torch.zeros(batch, max_size, model.config.vocab_size, device=device)
        self.graphs: List[torch.cuda.CUDAGraph] = []
        if use_graphs:
            self._capture()

    def _step(self, step: DecodingStep) -> None:
        """decode_step on the static buffers, into guided_logits[:, :step.size]: what a graph holds."""
        with compiling_parts(self.layer_parts):
            conditions = None if self.query_conditions is None else self.query_conditions[:, :step.size]
            logits = decode_step(self.model, step, self.fed_ids[:, :step.fed], self.fed_slots[:, :step.fed],
                                 self.query_slots[:, :step.size], self.cache, self.layer_parts, conditions)
            self.guided_logits[:, :step.size].copy_(logits)

    def _capture(self) -> None:
        # Warm up on a side stream (cuBLAS and attention pick their kernels), then capture each step
        # into one shared memory pool: steps replay in capture order, so they can reuse its memory.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for step in self.steps:
                self._step(step)
        torch.cuda.current_stream().wait_stream(side)
        pool = torch.cuda.graph_pool_handle()
        with torch.inference_mode():
            for step in self.steps:
                graph = torch.cuda.CUDAGraph()
                # thread_local: a training run's DataLoader pin-memory thread allocates pinned memory while
                # a sample grid is captured; in the default global mode that call breaks the capture.
                with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                    self._step(step)
                self.graphs.append(graph)

    def __call__(self, step: DecodingStep, fed_ids, fed_slots, query_slots, query_conditions=None) -> torch.Tensor:
        self.fed_ids[:, :step.fed].copy_(fed_ids)
        self.fed_slots[:, :step.fed].copy_(fed_slots)
        self.query_slots[:, :step.size].copy_(query_slots)
        if self.query_conditions is not None:
            self.query_conditions[:, :step.size].copy_(query_conditions)
        if self.graphs:
            self.graphs[step.index].replay()
        else:  # the step as it was planned when built, which is what a graph would replay
            self._step(self.steps[step.index])
        return self.guided_logits[:, :step.size]


class FastSampler:
    """Generates like autoregressive.generate.generate, from CUDA graphs kept for the last settings.
    compile_layers=True: also compile the layers (compiled_layer_parts): faster; equal to the reference loop run
    with the same parts, close to (not equal to) the eager one.

    Graphs point at the model's weights: build a new sampler after moving or casting the model.
    """

    def __init__(self, model, use_graphs: bool = True, compile_layers: Union[bool, str] = False):
        self.model, self.use_graphs = model, use_graphs
        self.layer_parts = layer_parts_for(model, compile_layers)
        self._steps: Optional[GraphedSteps] = None
        self._key: Optional[Tuple] = None

    @property
    def cache(self) -> Optional[KVCache]:
        """The KV cache of the steps kept for the last settings (None before the first call)."""
        return self._steps.cache if self._steps is not None else None

    def _graphed_steps(self, start: DecodingStart, sampling: SamplingConfig) -> GraphedSteps:
        key = (tuple(start.fed_ids.shape), start.steps, sampling.captured_settings(),
               start.target_conditions is not None)
        if key != self._key:
            self._steps = None  # free the old cache and graphs before allocating new ones
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self._steps = GraphedSteps(self.model, start, self.use_graphs, self.layer_parts)
            self._key = key
        return self._steps

    def generate(self, condition: torch.Tensor, sampling: Optional[SamplingConfig] = None,
                 orders: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                 known: Optional[torch.Tensor] = None, known_mask: Optional[torch.Tensor] = None,
                 condition_map: Optional[torch.Tensor] = None, **sampling_kwargs) -> torch.Tensor:
        """Same arguments and result as autoregressive.generate.generate."""
        sampling = sampling or SamplingConfig(**sampling_kwargs)
        return generate(self.model, condition, sampling, orders, generator, known, known_mask, condition_map,
                        runner=lambda start: self._graphed_steps(start, sampling))


def make_sampler(model, use_fast: bool = True, compile_layers: Union[bool, str] = False):
    """A function (labels, sampling, generator, **known tokens) -> tokens: the CUDA-graph path on CUDA,
    else the reference loop; keyword arguments (known, known_mask, condition_map) go to either.
    compile_layers: compile the layers too (faster; logits close to, not equal to, the eager layers'), in
    either path; a string names the torch.compile backend (tests use "aot_eager")."""
    if use_fast and model.embeddings.weight.is_cuda:
        decode = FastSampler(model, compile_layers=compile_layers).generate
        return lambda labels, sampling, generator, **kwargs: decode(labels, sampling, generator=generator, **kwargs)
    return reference_sampler(model, layer_parts_for(model, compile_layers))


def reference_sampler(model, layer_parts: Optional[LayerParts] = None):
    """The reference loop as make_sampler's function, over the model's eager layers or the given compiled
    layer parts (compiled once by the caller, who may use them elsewhere too)."""
    def decode(labels, sampling, generator, **kwargs):
        with compiling_parts(layer_parts):
            return generate(model, labels, sampling, generator=generator,
                            runner=lambda start: EagerSteps(model, start, layer_parts), **kwargs)
    return decode
