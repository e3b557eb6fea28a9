"""Who signed a PE image, for the manifest: cryptography (0.1-0.3 s to import) is loaded only
when the image has a certificate table to read."""

from __future__ import annotations

from pathlib import Path

from hlimage.formats import pe


def signers(path: Path) -> list[str]:
    with path.open("rb") as stream:
        if pe.parse(stream).signature is None:
            return []
    from hlimage.secureboot import trust

    signatures = trust.describe(path, digests=False).get("signatures", [])
    return [signature["signer"] for signature in signatures]
