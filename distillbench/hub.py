"""Is the Hugging Face Hub there? Asked once, before anything waits on it.

Without a data folder or a local model, a run reads the hub; offline, the libraries would retry for half
a minute and end in a traceback. One quick connection (or ``HF_HUB_OFFLINE``) answers instead, and the
run stops with one line that says what to give.
"""

from __future__ import annotations

import functools
import socket
from urllib.parse import urlparse

from distillbench.errors import UserError

DATA_HINT = "give --data-dir or set DISTILLBENCH_DATA (a folder with glue/, squad/, text/)"


@functools.cache
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """False when ``HF_HUB_OFFLINE`` is set or the hub's endpoint does not accept a connection."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def why_offline() -> str:
    from huggingface_hub import constants

    return "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hugging Face Hub is unreachable"


def require_hub_for_data(task: str) -> None:
    """No data folder was given: the task reads the hub, which must be there."""
    if not hub_reachable():
        raise UserError(f"{task}: no data folder and {why_offline()}: {DATA_HINT}")


def hub_model_available(model_id: str) -> bool:
    """A hub id can load when the hub is there or its config is already in the local hub cache."""
    if hub_reachable():
        return True
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model_id, "config.json"), str)
