"""The demo model: a small gpt-oss trained by this package on synthetic harmony conversations.

``python -m gptoss_agent.model.demo train OUT [--minutes N] [--seed S]`` trains it,
``... pack STATE OUT`` writes the shipped checkpoint, ``... path`` unpacks the shipped one into the
cache and prints the directory.
"""
