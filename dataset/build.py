"""Dataset name -> dataset."""
from dataset.codes import FolderCodes, LlamaGenCodes

DATASETS = {
    "imagenet_code": FolderCodes,  # RandAR's imagenet-llamagen-adm-256_codes, the official default
    "digits": FolderCodes,  # python -m dataset.digits writes the same layout
    "llamagen_code": LlamaGenCodes,
}


def build_dataset(name: str, code_path: str, seed: int = 0):
    """The dataset `name` read from code_path; augmentation picks derive from seed."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name](code_path, seed=seed)
