"""Write o200k_base.tiktoken offline from the quicktok-v1 package and verify its sha256.

Usage: python scripts/build_o200k.py DIR   (writes DIR/o200k_base.tiktoken; a no-op when present)

The tokenizer does this by itself when it finds no copy (into ~/.cache/gptoss-agent/tiktoken);
this script puts the file where you choose, for TIKTOKEN_ENCODINGS_BASE=DIR (openai-harmony reads it).
"""

import sys

from gptoss_agent.model.tokenizer import TokenizerNotFound, write_ranks_file

if __name__ == "__main__":
    try:
        write_ranks_file(sys.argv[1] if len(sys.argv) > 1 else ".cache/tiktoken")
    except (ImportError, TokenizerNotFound) as exc:
        sys.exit(f"build_o200k.py: {exc} (pip install quicktok-v1)")
