"""Backends that hold a model and answer tasks' queries.

Hugging Face transformers (``hf``, in :mod:`.hf`), raw weights (``weights``, in the base module), and a
scripted stand-in for tests, demos and replays.
"""

from cycleqd.evaluation.backends.prompting import render_plain
from cycleqd.evaluation.backends.scripted import ScriptedBackend

__all__ = ["ScriptedBackend", "render_plain"]
