"""Dataset name -> dataset."""
from typing import Optional

from dataset.codes import FolderCodes, LlamaGenCodes
from dataset.conditions import ConditionedCodes

DATASETS = {
    "imagenet_code": FolderCodes,  # RandAR's imagenet-llamagen-adm-256_codes, the official default
    "digits": FolderCodes,  # python -m dataset.digits writes the same layout
    "llamagen_code": LlamaGenCodes,
}


def build_dataset(name: str, code_path: str, seed: int = 0, condition_path: Optional[str] = None):
    """The dataset `name` read from code_path; augmentation picks derive from seed. With condition_path
    its items carry their condition maps (dataset/conditions.py)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    codes = DATASETS[name](code_path, seed=seed)
    return ConditionedCodes(codes, code_path, condition_path) if condition_path else codes
