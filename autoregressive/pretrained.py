"""Released weights by name, fetched from the Hugging Face Hub and loaded as strictly as local files.

    pipe = ARPGPipeline.from_pretrained("ARPG-L", device="cuda")  # hp-l33/ARPG + LlamaGen's VQ-16
    model = from_pretrained("ARPG-XL", device="cuda")               # the network alone
    vq = from_pretrained("VQ-16", device="cuda")                    # the tokenizer alone

Downloads go through huggingface_hub: its cache (HF_HOME, HF_HUB_CACHE), HF_HUB_OFFLINE=1 to read the
cache only, and revisions (a branch, tag or commit). The sampling scripts take `hf://owner/repo/file[@revision]`
wherever they take a checkpoint path (see `with_checkpoints_fetched`).
"""
import argparse
import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from autoregressive.fast_generate import make_sampler
from autoregressive.generate import check_class_ids
from autoregressive.render import tokens_to_images
from autoregressive.sampling import SamplingConfig
from autoregressive.utils.cli import HUB_PREFIX, InputNotFound, UserError
from autoregressive.weights import load_gpt, load_vq



@dataclass(frozen=True)
class HubFile:
    repo_id: str  # owner/name
    filename: str  # path inside the repository
    revision: Optional[str] = None  # branch, tag or commit; None: main

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/resolve/{self.revision or 'main'}/{self.filename}"


RELEASED = {
    "ARPG-L": HubFile("hp-l33/ARPG", "arpg_300m.pt"),
    "ARPG-XL": HubFile("hp-l33/ARPG", "arpg_700m.pt"),
    "ARPG-XXL": HubFile("hp-l33/ARPG", "arpg_1b.pt"),
    "VQ-16": HubFile("FoundationVision/LlamaGen", "vq_ds16_c2i.pt"),  # the tokenizer of all three
}
TOKENIZERS = ("VQ-16",)
IMAGENET_SIZES = ("ARPG-L", "ARPG-XL", "ARPG-XXL")  # their tokens are VQ-16 codes


def parse_hub_path(path: str) -> HubFile:
    """'hf://owner/repo/path/in/repo.pt[@revision]' -> HubFile."""
    spec, _, revision = path.removeprefix(HUB_PREFIX).partition("@")
    parts = spec.split("/")
    if not path.startswith(HUB_PREFIX) or len(parts) < 3 or not all(parts):
        raise UserError(f"{path!r} is not a Hub path hf://owner/repo/file[@revision], "
                         "e.g. hf://hp-l33/ARPG/arpg_300m.pt")
    return HubFile("/".join(parts[:2]), "/".join(parts[2:]), revision or None)


def download(file: HubFile) -> str:
    """The local path of `file`: from the Hugging Face cache, else downloaded into it."""
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.utils import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                           RevisionNotFoundError)
    except ImportError:
        raise UserError("weights by name need huggingface_hub: pip install huggingface_hub") from None
    where = f"{file.repo_id}/{file.filename}" + (f"@{file.revision}" if file.revision else "")
    try:
        return hf_hub_download(file.repo_id, file.filename, revision=file.revision)
    except LocalEntryNotFoundError:  # offline (HF_HUB_OFFLINE=1 or no network) and not cached
        raise InputNotFound(
            f"{where} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub cannot be reached: "
            f"download {file.url} and give its path instead (--gpt-ckpt, --vq-ckpt), or run "
            f"`hf download {file.repo_id} {file.filename}` on a machine with network and copy its cache to "
            f"{constants.HF_HUB_CACHE}") from None
    except RevisionNotFoundError:
        raise InputNotFound(f"{file.repo_id} has no revision {file.revision!r} on the Hub") from None
    except EntryNotFoundError:
        raise InputNotFound(f"{file.repo_id} has no file {file.filename!r} on the Hub") from None
    except RepositoryNotFoundError:
        message = f"no Hub repository {file.repo_id} (a private or gated one needs `hf auth login`)"
        raise InputNotFound(message) from None


def resolve_checkpoint(path: Optional[str], released_name: Optional[str] = None) -> Optional[str]:
    """A checkpoint argument as a local file: a plain path as given, an hf:// path fetched, and None the
    released file of `released_name` (None when that has none)."""
    if path is None:
        return download(RELEASED[released_name]) if released_name in RELEASED else None
    return download(parse_hub_path(path)) if path.startswith(HUB_PREFIX) else path


def with_checkpoints_fetched(args: argparse.Namespace) -> argparse.Namespace:
    """A copy of a sampling script's flags with --gpt-ckpt and --vq-ckpt as local files. Omitted, --gpt-ckpt
    is the released file of --gpt-model, and --vq-ckpt the released --vq-model for the ImageNet sizes
    (ARPG-L/XL/XXL, whether released or trained here); other models (the digits demo) need no tokenizer."""
    gpt_ckpt = resolve_checkpoint(args.gpt_ckpt, args.gpt_model)
    if gpt_ckpt is None:
        raise UserError(f"--gpt-ckpt is required: {args.gpt_model} has no released weights "
                         f"(released: {', '.join(name for name in RELEASED if name not in TOKENIZERS)})")
    vq_model = getattr(args, "vq_model", None)  # scripts without a tokenizer (the digits evaluator) lack both
    vq_ckpt = resolve_checkpoint(getattr(args, "vq_ckpt", None), vq_model if args.gpt_model in IMAGENET_SIZES else None)
    return argparse.Namespace(**{**vars(args), "gpt_ckpt": gpt_ckpt, "vq_ckpt": vq_ckpt})


def from_pretrained(name: str, device="cpu", revision: Optional[str] = None, precision: str = "none"):
    """The released network `name` (ARPG-L, ARPG-XL, ARPG-XXL, or the tokenizer VQ-16) in eval mode, its
    file fetched through the Hub cache and loaded with strict=True. precision: ARPG weights' dtype
    (none = float32, bf16, fp16); the tokenizer stays float32."""
    if name not in RELEASED:
        raise UserError(f"no released weights named {name!r}; choose one of {', '.join(RELEASED)}")
    path = download(dataclasses.replace(RELEASED[name], revision=revision))
    if name in TOKENIZERS:
        return load_vq(name, path, device)
    return load_gpt(name, path, device, precision)


@dataclass
class ARPGPipeline:
    """A class-conditional generator with its tokenizer: class ids in, images out."""

    model: torch.nn.Module
    vq: torch.nn.Module

    def __post_init__(self):
        self.sampler = make_sampler(self.model)  # built once: on CUDA it keeps its graphs across calls

    @classmethod
    def from_pretrained(cls, name: str, device="cpu", revision: Optional[str] = None, precision: str = "none",
                        tokenizer: str = "VQ-16") -> "ARPGPipeline":
        """ARPG `name` at `revision` and the released tokenizer; see from_pretrained."""
        return cls(from_pretrained(name, device, revision, precision), from_pretrained(tokenizer, device))

    def sample(self, class_labels: Sequence[int], seed: int = 0, **sampling) -> torch.Tensor:
        """(B,) class ids -> (B, 3, H, W) float images in [0, 1] (torchvision's save_image takes them).
        sampling: SamplingConfig fields (num_steps, cfg_scale, cfg_schedule, sample_schedule, ...)."""
        device = self.model.embeddings.weight.device
        labels = torch.as_tensor(class_labels, device=device).long()
        check_class_ids(labels, self.model.config.num_classes)
        generator = torch.Generator(device).manual_seed(seed)
        tokens = self.sampler(labels, SamplingConfig(**sampling), generator)
        images = tokens_to_images(tokens, self.model.config.grid_size, self.vq, self.model.config.vocab_size)
        return images.permute(0, 3, 1, 2).float() / 255
