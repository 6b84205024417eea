"""Logging that writes on rank 0 only, so training and sampling loops never branch on rank to log."""
import logging
import os
import sys
from typing import Optional


def get_logger(name: str = "arpg", log_dir: Optional[str] = None, rank: int = 0) -> logging.Logger:
    """Return a logger that prints (and writes `log_dir/log.txt`) on rank 0 and stays silent elsewhere."""
    logger = logging.getLogger(name if rank == 0 else f"{name}.rank{rank}")
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if rank != 0:
        logger.addHandler(logging.NullHandler())
        return logger
    logger.setLevel(logging.INFO)
    formatter = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    handlers = [logging.StreamHandler(sys.stdout)]
    if log_dir is not None:
        os.makedirs(log_dir, exist_ok=True)
        handlers.append(logging.FileHandler(os.path.join(log_dir, "log.txt")))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger
