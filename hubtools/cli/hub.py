"""The Hub client from the environment, in one place: HF_ENDPOINT and HF_TOKEN are read here.

The library takes the client as a parameter (`publish(..., api=...)`, `release(..., api=...)`).
"""

from __future__ import annotations

import os
from typing import Any

from hubtools.errors import PublishError


def hub_api(repo_id: str, *, need_token: bool) -> Any:
    """An `HfApi` for HF_ENDPOINT (default: the Hub) with HF_TOKEN, with huggingface_hub's bars off (ours draw).

    need_token: also look up the stored login (`hf auth login`, trusted publishing) and fail before any
    request when there is no token at all; otherwise the client resolves its token itself.

    Raises:
        PublishError: `need_token` and no token found.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # one bar per stage, ours
    token = os.environ.get("HF_TOKEN") or None
    if need_token:
        token = token or get_token()
        if not token:
            raise PublishError(
                f"{repo_id}: expected a Hugging Face token to publish, found none "
                "(set HF_TOKEN, run `hf auth login`, or use --dry-run)"
            )
    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
