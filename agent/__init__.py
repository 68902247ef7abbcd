"""The agent: the harmony codec, the loop, events, transcripts, workflows and the CLI."""
