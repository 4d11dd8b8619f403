"""Keeping other libraries' noise off the terminal unless ``jaxmap --verbose``.

transformers announces on import that PyTorch is missing (jaxmap never needs it) and, like
huggingface_hub and JAX, logs warnings about things a jaxmap user cannot act on; libraries
also raise Python warnings (deprecations, future changes). jaxmap's own warnings and notes
still show.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Iterator, Sequence

# Read by transformers: on import (its log level) and when it logs advice (the PyTorch banner).
_ENVIRONMENT = {"TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
_LOGGERS = ("transformers", "huggingface_hub", "jax", "absl", "tokenizers")


def wants_verbose(argv: Sequence[str]) -> bool:
    """Whether ``--verbose`` is among the global options (those before the subcommand)."""
    for argument in argv:
        argument = str(argument)
        if argument == "--verbose":
            return True
        if not argument.startswith("-"):
            return False
    return False


@contextlib.contextmanager
def quiet_third_parties() -> Iterator[None]:
    """Silence other libraries' warnings and log messages below errors while the block runs;
    restore the settings after it (the CLI's ``main`` may run several times in one process)."""
    saved_environment = {name: os.environ.get(name) for name in _ENVIRONMENT}
    for name, value in _ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    loggers = {name: logging.getLogger(name) for name in _LOGGERS}
    saved_levels = {name: logger.level for name, logger in loggers.items()}
    for logger in loggers.values():
        logger.setLevel(logging.ERROR)
    transformers_logging = None
    if "transformers" in sys.modules:  # imported already: its log level is set, not read
        from transformers.utils import logging as transformers_logging

        saved_verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore")
            warnings.filterwarnings("default", module=r"jaxmap(\.|$)")
            yield
    finally:
        for name, value in saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for name, logger in loggers.items():
            logger.setLevel(saved_levels[name])
        if transformers_logging is not None:
            transformers_logging.set_verbosity(saved_verbosity)
