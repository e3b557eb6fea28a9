"""SOURCE_DATE_EPOCH (reproducible-builds.org): the one time every output may carry."""

from __future__ import annotations

import os

from hlimage.errors import HlimageError


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH in seconds, or 0 when unset (FAT clamps that to 1980, its floor)."""
    text = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not text:
        return 0
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise HlimageError(
            f"SOURCE_DATE_EPOCH={text!r}: not a unix time; set it to whole seconds since 1970 "
            "or unset it"
        )
    return value
