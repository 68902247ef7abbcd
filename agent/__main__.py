"""``python -m gptoss_agent.agent``: the ``gptoss-agent`` command."""

import sys

from gptoss_agent.agent.cli import main

sys.exit(main())
