"""What the check reads off a model in a sampling mode: next-token distributions through the KV cache against
the float32 reference (KL, top-1 agreement), and the share of generated samples that match their prototype."""
import torch
import torch.nn.functional as F

from autoregressive.fast_generate import compiling_parts, reference_sampler
from scripts.precision_check.data import PrototypeCodes
from scripts.precision_check.modes import SamplingMode, mode_context


# Inference mode, as generate() samples: the compiled layer parts are guarded on their inputs' dispatch keys,
# which differ between inference and no_grad tensors; under no_grad these distributions compiled every part
# a second time, beside the samples' entries.
@torch.inference_mode()
def next_token_log_probs(model, mode: SamplingMode, codes, labels, orders, num_steps: int,
                         layer_parts=None) -> torch.Tensor:
    """(B, N, V) float32 log-probabilities of the tokens at orders' positions, in generation order, read
    through the KV cache as sampling reads them: `num_steps` steps of the default schedule over the
    fixed orders, each step feeding the true codes (B, N) of the positions the last one predicted, no
    guidance. With one token a step this is teacher forcing (the forward pass, which has no cache).
    layer_parts: the compiled layer parts of a compile_layers mode (fast_generate.layer_parts_for)."""
    from autoregressive.generate import EagerSteps, start_decoding
    from autoregressive.sampling import SamplingConfig

    sampling = SamplingConfig(num_steps=num_steps, cfg_scale=1.0, kv_cache=mode.kv_cache)
    true_ids = codes.gather(1, orders)  # (B, N) generation order
    target_slots = orders + model.config.cls_token_num
    logits = []
    with mode_context(mode, codes.device), compiling_parts(layer_parts):
        start = start_decoding(model, labels, sampling, orders=orders)
        run_step, fed_ids, fed_slots = EagerSteps(model, start, layer_parts), start.fed_ids, start.fed_slots
        for step in start.steps:
            query_slots = target_slots[:, step.done_before:step.done_after]
            logits.append(run_step(step, fed_ids, fed_slots, query_slots))
            fed_ids, fed_slots = true_ids[:, step.done_before:step.done_after], query_slots
    return F.log_softmax(torch.cat(logits, dim=1).float(), dim=-1)


def compare_to_reference(reference: torch.Tensor, log_probs: torch.Tensor):
    """Mean KL(reference || log_probs) over positions and the share of positions with the same top-1."""
    kl = (reference.exp() * (reference - log_probs)).sum(-1).mean().item()
    top1 = (reference.argmax(-1) == log_probs.argmax(-1)).float().mean().item()
    return max(kl, 0.0), top1


def decoding_steps(args) -> int:
    """Steps per decoding, generating and reading the held-out distributions alike."""
    return args.num_steps or args.grid ** 2


@torch.no_grad()
def sample_match_share(model, mode: SamplingMode, dataset: PrototypeCodes, args, device, layer_parts=None) -> float:
    """Share of args.samples_per_class samples of every class that match their prototype; the same
    random stream for every model and mode. layer_parts: as next_token_log_probs'."""
    from autoregressive.sampling import SamplingConfig

    sampling = SamplingConfig(num_steps=decoding_steps(args), cfg_scale=args.cfg_scale, kv_cache=mode.kv_cache)
    labels = torch.arange(args.num_classes, device=device).repeat_interleave(args.samples_per_class)
    generator = torch.Generator(device).manual_seed(args.global_seed)
    sample = reference_sampler(model, layer_parts)
    with mode_context(mode, device):
        tokens = torch.cat([sample(chunk, sampling, generator) for chunk in labels.split(args.sample_batch)])
    return dataset.match_share(tokens, labels)
