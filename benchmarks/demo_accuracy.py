"""Accuracy of the demo model on its held-out split, through the real Agent, sandbox and browser.

    python benchmarks/demo_accuracy.py [--n 100] [--checkpoint DIR] [--url http://127.0.0.1:8000] [--out FILE.json]

Without ``--checkpoint`` it measures the shipped checkpoint (``load_engine("demo")``); ``--url``
measures a vLLM server serving the same weights through ``RemoteEngine``. Prints a Markdown table
by skill and by result length (the README's table) and, with ``--out``, every case as JSON.
"""

from __future__ import annotations

import sys

from gptoss_agent.model.demo.__main__ import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--checkpoint" in args:  # the module's eval takes the directory as a positional argument
        i = args.index("--checkpoint")
        args = [args[i + 1], *args[:i], *args[i + 2 :]]
    if "--out" in args:
        args[args.index("--out")] = "--json"
    sys.exit(main(["eval", *args]))
