"""The errors jaxmap raises for people: one hierarchy, one message per error.

Every error meant for a person (a bad file, an unsupported model, a foreign store, a full disk)
is a :class:`JaxmapError` whose message names the file, line, model or field and says what is
wrong. The CLI catches :class:`JaxmapError` in one place, prints its message on one line and
exits with status 2. Any other exception is a bug in jaxmap and keeps its traceback.

The subclasses keep a builtin base (``ValueError``, ``OSError`` ...) where callers of the
Python API have always caught that.
"""

from __future__ import annotations


class JaxmapError(Exception):
    """An error meant for a person; the message says what is wrong and where."""


class TextSetError(JaxmapError, ValueError):
    """A text file that cannot be read as a text set; the message names the file and line."""


class CheckpointError(JaxmapError, ValueError):
    """A model reference that cannot be loaded; the message names the model and the problem."""


class UnsupportedModelError(JaxmapError, ValueError):
    """A model jaxmap would compute wrongly: unknown architecture, config field or tensor."""


class GGUFConversionError(JaxmapError, ValueError):
    """A GGUF file that cannot be converted; the message names the file and the problem."""


class PackagedModelError(JaxmapError, LookupError):
    """A packaged model that is unknown, not installed, or damaged; the message says what to do."""


class HubError(CheckpointError):
    """The model hub could not be reached or refused a model; names the model and the host problem."""


class StoreError(JaxmapError, RuntimeError):
    """A store that cannot be used as asked; the message names the file and the reason."""


class StoreMismatchError(StoreError):
    """Rows that are not comparable with a store's: another text set or other settings."""


class AnalysisError(JaxmapError, ValueError):
    """An input the analysis cannot use; the message says which input and what is wrong."""


class InputError(AnalysisError):
    """A matrix file that cannot be read; the message names the file and the problem."""


class OutputError(JaxmapError, OSError):
    """An output that cannot be written (it is an input, or the disk refused it)."""


class DemoSourceError(JaxmapError, RuntimeError):
    """A demo source that is not installed, or not at its pinned version; names the fix."""


class ModelsFailedError(JaxmapError, RuntimeError):
    """A scoring job finished, but some models failed; the message lists them with reasons."""

    def __init__(self, message: str, failures: dict[str, str]) -> None:
        super().__init__(message)
        self.failures = failures
