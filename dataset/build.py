"""Dataset name -> dataset."""
from typing import Optional

from autoregressive.utils.cli import UserError
from dataset.codes import FolderCodes, LlamaGenCodes
from dataset.conditions import ConditionedCodes

DATASETS = {
    "imagenet_code": FolderCodes,  # RandAR's imagenet-llamagen-adm-256_codes, the official default
    "digits": FolderCodes,  # python -m dataset.digits writes the same layout
    "llamagen_code": LlamaGenCodes,
}


def build_dataset(name: str, code_path: str, seed: int = 0, vocab_size: Optional[int] = None,
                  num_classes: Optional[int] = None, condition_path: Optional[str] = None):
    """The dataset `name` read from code_path; augmentation picks derive from seed. Token ids and labels
    are checked against vocab_size and num_classes (when given) as files are read. With condition_path
    its items carry their condition maps (dataset/conditions.py)."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    codes = DATASETS[name](code_path, seed=seed, vocab_size=vocab_size, num_classes=num_classes)
    return ConditionedCodes(codes, code_path, condition_path) if condition_path else codes
