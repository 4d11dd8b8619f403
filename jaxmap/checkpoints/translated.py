"""A checkpoint's config, translated once.

Validating a model, ordering a job's list by shape and loading the model each need its
:class:`~jaxmap.models.DecoderConfig`; :func:`translated_config` translates a checkpoint's
config.json once and hands the same result to each.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from ..models import DecoderConfig, translate_config

if TYPE_CHECKING:
    from . import Checkpoint


# A job validates its whole list before it loads the first model, so the cache holds a long
# list's worth (an entry is about a kilobyte); past that, a config is only translated again.
_KEPT = 1024
_translated: OrderedDict[tuple, tuple[str, DecoderConfig]] = OrderedDict()
_lock = threading.Lock()  # the job's loader thread translates too


def translated_config(checkpoint: Checkpoint) -> tuple[str, DecoderConfig]:
    """The checkpoint's architecture and decoder config (:func:`jaxmap.models.translate_config`
    of its config.json), translated once per checkpoint and config.

    config.json is read on every call, and the translation kept under the checkpoint and a hash
    of what was read: a checkpoint's ``revision`` pins its config only as it was when it was
    resolved, and a config changed on disk since (a file damaged under a resolved checkpoint)
    must be seen. A config that cannot be read or translated raises every time.
    """
    hf_config = checkpoint.config()
    content = hashlib.sha256(json.dumps(hf_config, sort_keys=True).encode()).hexdigest()
    key = (checkpoint, content)
    with _lock:
        if key in _translated:
            _translated.move_to_end(key)
            return _translated[key]
    result = translate_config(hf_config, checkpoint.reference)
    with _lock:
        _translated[key] = result
        if len(_translated) > _KEPT:
            _translated.popitem(last=False)
    return result
