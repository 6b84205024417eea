"""Starting a run from trained weights (--init-from): the same model's, or a class-only model's for a
controllable one, whose condition parameters start fresh (models/condition.py). Strict either way."""
import os

import torch

from autoregressive.models.condition import fresh_condition_parameters
from autoregressive.utils.logger import get_logger
from autoregressive.weights import check_state_dict, extract_state_dict, read_checkpoint


def load_initial_weights(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """Fill `model` from the checkpoint at `path` (its EMA weights when it has them).

    A controllable model (condition_vocab_size > 0) given a class-only checkpoint gets every
    class-only key from the file and the fresh condition parameters of fresh_condition_parameters, so
    it starts as exactly the class-only model; the load is strict over both."""
    state = extract_state_dict(read_checkpoint(path))
    condition_keys = {key: value for key, value in model.state_dict().items()
                      if key.startswith("condition_embeddings.")}
    fresh = bool(condition_keys) and not any(key in state for key in condition_keys)
    check_state_dict(model, {**condition_keys, **state} if fresh else state)  # every other key must fit
    if fresh:
        state = {**state, **fresh_condition_parameters(model, state)}
    model.load_state_dict(state, strict=True)
    logger = get_logger("arpg.finetune", rank=int(os.environ.get("RANK", 0)))  # the process group may not exist yet
    logger.info(f"initialised from {path}" + (" with fresh condition parameters" if fresh else ""))
    return model
