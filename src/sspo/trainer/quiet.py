"""The library is quiet unless asked: Hugging Face's own progress bars (``transformers``' "Loading
weights" and "Writing model shards", ``huggingface_hub``'s downloads) are switched off while the
trainer loads, saves and exports models, and switched back on afterwards if they were on. The
trainer's own progress bar (``progress``) is not theirs and stays.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings

__all__ = ["hf_progress_bars_off"]


@contextlib.contextmanager
def hf_progress_bars_off():
    """Context manager (and decorator): no ``transformers`` / ``huggingface_hub`` tqdm bars inside; on
    exit both libraries' settings are as they were. ``HF_HUB_DISABLE_PROGRESS_BARS=0`` (bars asked for)
    leaves them on."""
    from transformers.utils import logging as hf_logging

    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the module (``utils.tqdm`` is also a class)

    if hub_tqdm.HF_HUB_DISABLE_PROGRESS_BARS is False:
        yield
        return
    transformers_on = hf_logging.is_progress_bar_enabled()
    hub_states = dict(hub_tqdm.progress_bar_states)
    hf_logging.disable_progress_bar()  # transformers' flag, and huggingface_hub's global one
    try:
        yield
    finally:
        with warnings.catch_warnings():  # enabling warns under HF_HUB_DISABLE_PROGRESS_BARS=1
            warnings.simplefilter("ignore")
            if transformers_on:
                hf_logging.enable_progress_bar()
        hub_tqdm.progress_bar_states.clear()
        hub_tqdm.progress_bar_states.update(hub_states)
