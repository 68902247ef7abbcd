"""Write o200k_base.tiktoken offline from the quicktok-v1 package and verify its sha256.

Usage: python scripts/build_o200k.py DIR   (writes DIR/o200k_base.tiktoken; a no-op when present)
"""

import base64
import hashlib
import sys
from pathlib import Path

SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"


def main(out_dir: str) -> None:
    target = Path(out_dir) / "o200k_base.tiktoken"
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == SHA256:
        return
    import quicktok

    enc = quicktok.get_encoding("o200k_base")
    data = b"".join(
        base64.b64encode(enc.decode_single_token_bytes(rank)) + b" " + str(rank).encode() + b"\n"
        for rank in range(199998)
    )
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        sys.exit(f"quicktok's o200k_base ranks hash to {digest}, expected {SHA256}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".cache/tiktoken")
