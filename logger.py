"""Logging: colored console output on rank 0, a plain log file per rank in the output folder.

The handlers sit on the root logger, so the messages of every module (data, models) reach them too."""
import functools
import logging
import os
import sys

from termcolor import colored


@functools.lru_cache()
def create_logger(output_dir: str, dist_rank: int = 0, name: str = 'train') -> logging.Logger:
    """Return the run's logger (cached: every call with the same arguments gets the same one)."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.handlers.clear()

    fmt = '[%(asctime)s %(name)s] (%(filename)s %(lineno)d): %(levelname)s %(message)s'
    color_fmt = (colored('[%(asctime)s %(name)s]', 'green') + colored('(%(filename)s %(lineno)d)', 'yellow')
                 + ': %(levelname)s %(message)s')
    datefmt = '%Y-%m-%d %H:%M:%S'

    if dist_rank == 0:
        console = logging.StreamHandler(sys.stdout)
        console.setLevel(logging.INFO)
        console.setFormatter(logging.Formatter(color_fmt, datefmt=datefmt))
        root.addHandler(console)

    os.makedirs(output_dir, exist_ok=True)
    file_handler = logging.FileHandler(os.path.join(output_dir, f'log_rank{dist_rank}.txt'), mode='a')
    file_handler.setFormatter(logging.Formatter(fmt, datefmt=datefmt))
    root.addHandler(file_handler)
    return logging.getLogger(name)
