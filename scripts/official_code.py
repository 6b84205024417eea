"""The official ARPG code (github hp-l33/ARPG, not part of this project) as the benchmarks run it: its
models/arpg.py imported from a copy, and the stand-in for transformers that it needs where that package
is missing (the GPU machine has no package registry)."""
import importlib.util
import os
import sys
import types

from autoregressive.utils.cli import InputNotFound, UserError

OFFICIAL_MODULE = "arpg_official_model"


def install_transformers_stand_in() -> None:
    """The official model imports transformers for one thing: PretrainedConfig, the base class of its
    ModelArgs, whose own __init__ sets every field and never calls the base's. Where transformers is
    missing, a plain class stands in for it."""
    try:
        import transformers.configuration_utils  # noqa: F401
        return
    except ImportError:
        pass
    package, configuration = types.ModuleType("transformers"), types.ModuleType("transformers.configuration_utils")
    configuration.PretrainedConfig = type("PretrainedConfig", (), {})
    package.configuration_utils = configuration
    sys.modules.update({"transformers": package, "transformers.configuration_utils": configuration})
    print("transformers is not installed: the official ModelArgs gets a plain base class instead of "
          "transformers' PretrainedConfig (it uses nothing of it)", flush=True)


def load_official(repo: str):
    """The official models/arpg.py as a module of its own name (our `autoregressive` is not shadowed)."""
    path = os.path.join(repo, "models", "arpg.py")
    if not os.path.isfile(path):
        raise InputNotFound(f"--official-repo {repo}: no models/arpg.py there; pass a clone of "
                            "https://github.com/hp-l33/ARPG")
    install_transformers_stand_in()
    spec = importlib.util.spec_from_file_location(OFFICIAL_MODULE, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as error:
        raise UserError(f"the official model needs a package that is missing here: {error} "
                        "(it imports einops)") from error
    return module
