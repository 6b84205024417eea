"""The training configuration: one typed place for every setting, its default and its command-line flag."""
import argparse
import dataclasses
import operator
import typing
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

from autoregressive.models.arpg import ARPG_models
from autoregressive.models.config import MLP_KERNELS
from autoregressive.train.precision import PRECISION_POLICIES, check_policy, check_quack_mlp
from autoregressive.train.stopping import STOP_SIGNALS, STOPPED_EXIT_CODE, parse_deadline
from autoregressive.utils.cli import UserError, check_at_least, check_at_most


def option(default=dataclasses.MISSING, *, flags=None, combine=None, default_factory=dataclasses.MISSING,
           **argparse_options):
    """A TrainConfig field with its command line: one flag named after the field (gpt_model -> --gpt-model)
    taking `argparse_options`, or `flags`, (name, options) pairs whose parsed values `combine` turns into
    the field's value. Flag defaults, types and the config built from the flags all come from the field, so
    a new setting is written once."""
    metadata = {"options": argparse_options, "flags": flags, "combine": combine}
    return field(default=default, default_factory=default_factory, metadata=metadata)


@dataclass
class TrainConfig:
    code_path: str = option(required=True, help="folder of code files (see --dataset)")
    gpt_model: str = option("ARPG-L", choices=list(ARPG_models))
    dataset: str = option("imagenet_code", choices=["imagenet_code", "llamagen_code", "digits"],
                          help="imagenet_code: RandAR layout {class}/{i}.npy; llamagen_code: *_codes/ + *_labels/; "
                               "digits: the embedded demo set (python -m dataset.digits)")
    results_dir: str = option("results")
    epochs: int = option(300)
    max_steps: Optional[int] = option(None, help="stop after this many optimizer steps")  # the LR still follows epochs
    global_batch_size: int = option(256)
    gradient_accumulation_steps: int = option(1)
    lr: float = option(1e-4)
    min_lr: float = option(1e-5)
    warmup_epochs: float = option(100)
    lr_schedule: str = option("cosine", choices=["cosine", "constant"])
    weight_decay: float = option(5e-2)
    betas: List[float] = option(default_factory=lambda: [0.9, 0.95], flags=(("--beta1", {}), ("--beta2", {})),
                                combine=lambda *betas: list(betas))
    max_grad_norm: float = option(1.0, help="0 disables clipping")
    ema: bool = option(False, action="store_true", help="keep an EMA of the weights (decay 0.9999)")
    ema_decay: float = 0.9999
    dropout_p: float = option(0.1, help="residual and FFN dropout")
    token_dropout_p: float = option(0.1, help="input token dropout")
    drop_path_rate: float = option(0.0, help="stochastic depth, rising linearly over the layers to this rate; > 0 "
                                             "turns --dropout-p off")
    compile: bool = option(True, flags=(("--no-compile", dict(action="store_true", help="do not torch.compile the "
                                                              "model (CUDA only)")),), combine=operator.not_)
    # Compiled step: below 1, compile's partitioner recomputes cheap ops in the backward pass instead of
    # keeping their outputs: less memory for some recomputation (python -m scripts.bench_train measures both).
    activation_memory_budget: float = option(
        1.0, metavar="FRACTION", help="compiled step on CUDA: below 1, recompute cheap ops in the backward pass to "
        "keep less activation memory, at some speed cost (scripts.bench_train measures both)")
    grad_checkpointing: str = option(
        "none", nargs="?", const="all", metavar="LAYERS", help="recompute layers in the backward pass (less "
        "activation memory): bare or 'all', 'self', 'cross' (one layer kind), or a number n (the first n layers)")
    data_parallel: str = option("ddp", choices=["ddp", "fsdp"],
                                help="ddp: every GPU holds the model; fsdp: parameters, gradients and optimizer state "
                                     "sharded over GPUs (FSDP2), checkpoints sharded (python -m "
                                     "scripts.convert_checkpoint)")
    chunked_loss: bool = option(True, action=argparse.BooleanOptionalAction,
                                help="cross-entropy chunk by chunk without keeping the float32 logits: the same loss "
                                     "and speed, 4 GiB less for ARPG-L at batch 128 (on by default)")
    mixed_precision: str = option("bf16", choices=["none", "fp16", "bf16"])  # on CUDA: the autocast dtype
    precision_policy: str = option(
        "exact", choices=list(PRECISION_POLICIES),
        help="exact: the released numerics (float32 weights and residual stream, bf16 autocast); opt-in bf16: bf16 "
             "compute weights over float32 master weights (DDP or FSDP; with --grad-checkpointing, FSDP only); fp8 / "
             "fp8-rowwise: torchao float8 matmuls, scaled per tensor / per row (CUDA sm89+). Checkpoints hold float32 "
             "weights")
    mlp_kernel: str = option("torch", choices=list(MLP_KERNELS),
                             help="opt-in quack: quack-kernels' SwiGLU MLP in training, the activation fused into its "
                                  "GEMMs (Hopper or Blackwell, pip install quack-kernels; docs/numerics.md)")
    ckpt_every: int = option(5000)
    log_every: int = option(100)
    num_workers: int = option(24)
    global_seed: int = option(0)
    deterministic: bool = option(False, action="store_true",
                                 help="deterministic kernels: two runs (or a run and its resume) from one seed give "
                                      "the same losses to the bit on the same GPUs and build, at some speed cost")
    vocab_size: int = option(16384)
    num_classes: int = option(1000)
    image_size: int = option(256)
    downsample_size: int = option(16)
    cls_token_num: int = option(1)
    # Controllable generation: condition maps beside the codes (dataset/conditions.py); the vocabulary
    # size comes from the folder's condition.json (0 = a class-only model).
    condition_path: Optional[str] = option(
        None, help="controllable generation: condition maps beside the codes (python -m dataset.digits writes "
                   "{split}_shape/, extract_conditions_c2i.py edge maps); sizes the condition table")
    condition_vocab_size: int = 0
    condition_dropout_prob: float = option(
        0.1, flags=(("--condition-dropout-p", dict(help="condition map dropped to 'no condition' for guidance (also "
                                                        "with every dropped class)")),))
    init_from: Optional[str] = option(
        None, help="start from these weights with a fresh optimizer (fine-tuning); a class-only checkpoint for a "
                   "--condition-path run loads strictly plus fresh condition parameters")
    # The official flag --gpt-ckpt names the checkpoint to resume; --resume also finds the latest one.
    resume: Optional[str] = option(
        None, flags=(("--gpt-ckpt", dict(help="resume from this checkpoint (the official flag)")),
                     ("--resume", dict(nargs="?", const="latest",
                                       help="resume: bare = latest checkpoint of the newest run of --gpt-model in "
                                            "--results-dir (a new run if there is none); or a checkpoint file or "
                                            "run folder"))),
        combine=lambda gpt_ckpt, resume: gpt_ckpt or resume)
    # Ending early without losing work (train/stopping.py): SIGTERM, the stop signal, the time limit and the
    # deadline all stop every rank at the next step boundary with a checkpoint.
    stop_signal: str = option("SIGUSR1", choices=list(STOP_SIGNALS),
                              help="besides SIGTERM, this signal (to any worker; to torchrun too if in its "
                                   "--signals-to-handle) stops all ranks at the next step with a checkpoint; exit "
                                   f"code {STOPPED_EXIT_CODE}, continue with --resume")
    time_limit: Optional[float] = option(None, metavar="MINUTES", help="checkpoint and exit (code "
                                         f"{STOPPED_EXIT_CODE}) this many minutes after training starts")
    deadline: Optional[str] = option(None, metavar="TIME", help="checkpoint and exit at this local time, e.g. "
                                     "2030-01-31T08:00 (leave a step and a checkpoint write of room before the "
                                     "job's end)")
    keep_last: Optional[int] = option(None, metavar="N", help="keep only the N newest checkpoints of the run "
                                      "(default: all)")
    wandb: bool = option(False, action="store_true", help="log to Weights & Biases (off by default)")
    # Watching the run (autoregressive/train/monitor.py, docs/training.md); the run trains the same with them.
    sample_every: int = option(0, metavar="STEPS", help="save a grid of samples (fixed classes and seed, EMA weights "
                               "when kept) to RUN/grids/STEP.png every this many steps (0: never)")
    eval_every: int = option(0, metavar="STEPS", help="evaluate every this many steps (0: never): FID, IS, sFID against "
                             "--eval-ref-batch (the digits model: class accuracy and Frechet distance) in log.txt, "
                             "RUN/metrics.csv and RUN/metrics.png")
    eval_num_images: int = option(10000, help="samples per evaluation (sample i has class i mod the classes)")
    eval_ref_batch: Optional[str] = option(None, help="reference .npz: an ADM batch (VIRTUAL_imagenet256_labeled.npz) "
                                           "or precomputed statistics mu, sigma (and mu_s, sigma_s for sFID)")
    eval_batch_size: int = option(64, help="samples per process per batch (the samples depend on it, not on the "
                                  "number of processes)")
    eval_num_steps: int = option(64, flags=(("--eval-step", dict(help="decoding steps of grids and evaluations")),))
    eval_cfg_scale: float = option(4.0, help="guidance scale of grids and evaluations")
    eval_precision_recall: bool = option(False, action="store_true",
                                         help="also precision and recall (needs the reference images, arr_0)")
    inception_weights: Optional[str] = option(None, help="torch-fidelity's Inception weights file; omitted: its "
                                              "download, or the torch hub cache")
    stop_on_eval_error: bool = option(False, action="store_true", help="a failed grid or evaluation ends the run "
                                      "(default: one line in the log, and training goes on)")
    vq_model: str = option("VQ-16")
    vq_ckpt: Optional[str] = option(None, help="the tokenizer that draws grids and evaluation samples (a file or "
                                    "hf://...); omitted: the released VQ-16 for VQ-16 codes; the digits model needs none")
    num_threads: Optional[int] = option(None, help="torch CPU threads (matters on small CPUs)")
    device: str = option("auto", choices=["auto", "cuda", "cpu"])

    def __post_init__(self):
        if self.data_parallel not in ("ddp", "fsdp"):
            raise UserError(f"--data-parallel must be ddp or fsdp, got {self.data_parallel!r}")
        check_policy(self.precision_policy, self.data_parallel, self.grad_checkpointing)
        if self.mlp_kernel == "quack":
            check_quack_mlp(self.precision_policy, self.mixed_precision, self.deterministic)
        if not 0.0 <= self.activation_memory_budget <= 1.0:
            raise UserError(f"--activation-memory-budget must be in [0, 1], got {self.activation_memory_budget}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise UserError(f"--drop-path-rate must be in [0, 1), got {self.drop_path_rate}")
        if self.gradient_accumulation_steps < 1:
            raise UserError("--gradient-accumulation-steps must be >= 1")
        if not 0.0 <= self.condition_dropout_prob <= 1.0:
            raise UserError(f"--condition-dropout-p must be in [0, 1], got {self.condition_dropout_prob}")
        self.check_counts_and_rates()
        if self.stop_signal not in STOP_SIGNALS:
            raise UserError(f"--stop-signal must be one of {', '.join(STOP_SIGNALS)}, got {self.stop_signal!r}")
        parse_deadline(self.deadline)
        self.check_watching()
        if self.image_size % self.downsample_size:
            raise UserError(f"--image-size {self.image_size} is not a multiple of --downsample-size {self.downsample_size}")

    def check_counts_and_rates(self) -> None:
        for flag, value, minimum in (("--epochs", self.epochs, 1), ("--max-steps", self.max_steps, 1),
                                     ("--global-batch-size", self.global_batch_size, 1), ("--lr", self.lr, 0),
                                     ("--min-lr", self.min_lr, 0), ("--warmup-epochs", self.warmup_epochs, 0),
                                     ("--weight-decay", self.weight_decay, 0), ("--max-grad-norm", self.max_grad_norm, 0),
                                     ("--ckpt-every", self.ckpt_every, 1), ("--log-every", self.log_every, 1),
                                     ("--num-workers", self.num_workers, 0), ("--vocab-size", self.vocab_size, 1),
                                     ("--num-classes", self.num_classes, 1), ("--image-size", self.image_size, 1),
                                     ("--downsample-size", self.downsample_size, 1),
                                     ("--cls-token-num", self.cls_token_num, 1), ("--num-threads", self.num_threads, 1),
                                     ("--time-limit", self.time_limit, 0), ("--keep-last", self.keep_last, 1)):
            check_at_least(flag, value, minimum)
        for flag, value in (("--dropout-p", self.dropout_p), ("--token-dropout-p", self.token_dropout_p),
                            ("--beta1", self.betas[0]), ("--beta2", self.betas[1])):
            if not 0 <= value < 1:
                raise UserError(f"{flag} must be in [0, 1), got {value}")
        if self.grad_checkpointing not in ("none", "all", "self", "cross") and not self.grad_checkpointing.isdigit():
            raise UserError(f"--grad-checkpointing must be all, self, cross or a number, got {self.grad_checkpointing!r}")

    def check_watching(self) -> None:
        for flag, value, minimum in (("--sample-every", self.sample_every, 0), ("--eval-every", self.eval_every, 0),
                                     ("--eval-num-images", self.eval_num_images, 2),
                                     ("--eval-batch-size", self.eval_batch_size, 1), ("--eval-step", self.eval_num_steps, 1),
                                     ("--eval-cfg-scale", self.eval_cfg_scale, 0)):
            check_at_least(flag, value, minimum)
        if not (self.sample_every or self.eval_every):
            return
        check_at_most("--eval-step", self.eval_num_steps, self.block_size, "the number of tokens of an image")
        if self.data_parallel == "fsdp":
            raise UserError("--sample-every / --eval-every need --data-parallel ddp (an FSDP run holds its weights "
                            "sharded); sample its checkpoints with sample_c2i_ddp.py instead")
        if self.eval_every and self.dataset != "digits" and not self.eval_ref_batch:
            raise UserError("--eval-every needs --eval-ref-batch: an ADM reference batch (e.g. "
                            "VIRTUAL_imagenet256_labeled.npz) or an .npz of precomputed statistics (mu, sigma)")

    @property
    def block_size(self) -> int:
        return (self.image_size // self.downsample_size) ** 2


# Fields that checkpoints of earlier versions saved and this one no longer has. Each changed only how a step
# ran, not the weights, so a saved config drops them: kernels (the opt-in Liger-Kernel training kernels).
RETIRED_FIELDS = ("kernels",)


def saved_train_config(saved: dict) -> TrainConfig:
    """The TrainConfig of a checkpoint's saved config (dataclasses.asdict of the run's), retired fields dropped."""
    return TrainConfig(**{key: value for key, value in saved.items() if key not in RETIRED_FIELDS})


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    """The ARPG model a run with this configuration trains, freshly initialised."""
    drop_path_layer, dropout_p = None, cfg.dropout_p
    if cfg.drop_path_rate > 0:  # as the official recipe: stochastic depth replaces residual and FFN dropout
        from timm.layers import DropPath

        drop_path_layer, dropout_p = DropPath, 0.0
    return ARPG_models[cfg.gpt_model](vocab_size=cfg.vocab_size, num_classes=cfg.num_classes, block_size=cfg.block_size,
                                      cls_token_num=cfg.cls_token_num, resid_dropout_p=dropout_p,
                                      ffn_dropout_p=dropout_p, token_dropout_p=cfg.token_dropout_p,
                                      grad_checkpointing=cfg.grad_checkpointing, drop_path_rate=cfg.drop_path_rate,
                                      drop_path_layer=drop_path_layer, condition_vocab_size=cfg.condition_vocab_size,
                                      condition_dropout_prob=cfg.condition_dropout_prob, mlp_kernel=cfg.mlp_kernel)


def field_flags(config_field: dataclasses.Field) -> List[Tuple[str, dict]]:
    """The (flag, argparse options) pairs of a TrainConfig field; none for a field set only in code."""
    if "options" not in config_field.metadata:
        return []
    flag = "--" + config_field.name.replace("_", "-")
    return list(config_field.metadata["flags"] or [(flag, config_field.metadata["options"])])


def flag_dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def flag_type(annotation):
    """int or float for a numeric field (Optional[int] and List[float] included); None (strings) otherwise."""
    inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    base = inner[0] if inner else annotation
    return base if base in (int, float) else None


def add_train_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add every TrainConfig flag to `parser`, defaulting to the dataclass defaults (a list default gives one
    value to each of its flags). Read them back with train_config_from_args."""
    for config_field in dataclasses.fields(TrainConfig):
        for index, (flag, options) in enumerate(field_flags(config_field)):
            options = dict(options)
            default = (config_field.default_factory() if config_field.default_factory is not dataclasses.MISSING
                       else config_field.default)
            if default is not dataclasses.MISSING and options.get("action") != "store_true":
                options["default"] = default[index] if isinstance(default, list) else default
            if "action" not in options and flag_type(config_field.type) is not None:
                options["type"] = flag_type(config_field.type)
            parser.add_argument(flag, **options)
    return parser


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of the flags added by add_train_args (fields without a flag keep their defaults)."""
    values = {}
    for config_field in dataclasses.fields(TrainConfig):
        flags = field_flags(config_field)
        if flags:
            given = [getattr(args, flag_dest(flag)) for flag, _ in flags]
            combine = config_field.metadata["combine"]
            values[config_field.name] = combine(*given) if combine else given[0]
    return TrainConfig(**values)
