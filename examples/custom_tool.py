"""Give the model your own tools: typed Python functions become harmony ``functions.*`` tools.

    python examples/custom_tool.py --model /path/to/gpt-oss-20b/original "How far is Lyon from Paris, in miles?"
    python examples/custom_tool.py --demo     # no model: a scripted engine plays the model's part

``@tool`` reads the name, the description and each parameter's description from the signature and
the docstring; the model's arguments are checked against the JSON Schema before the call, and a
mistake (a wrong type, an unknown city) goes back to the model as the tool's answer.
"""

from __future__ import annotations

import argparse
import os
from typing import Literal

from gptoss_agent.agent import Agent, ScriptedEngine
from gptoss_agent.agent.render import Renderer
from gptoss_agent.tools import ToolError, tool
from rich.console import Console

DISTANCES_KM = {("lyon", "paris"): 392.0, ("marseille", "paris"): 661.0, ("lyon", "marseille"): 278.0}


@tool
def road_distance(origin: str, destination: str, unit: Literal["km", "mi"] = "km") -> dict:
    """Road distance between two French cities.

    Args:
        origin: A city name, e.g. "Paris".
        destination: Another city name.
        unit: Kilometres or miles.
    """
    key = tuple(sorted((origin.strip().lower(), destination.strip().lower())))
    if key not in DISTANCES_KM:
        raise ToolError(
            f"No distance known between {origin} and {destination}; known cities: Paris, Lyon, Marseille."
        )
    km = DISTANCES_KM[key]  # type: ignore[index]
    return {"distance": round(km if unit == "km" else km / 1.609344, 1), "unit": unit}


DEMO = [
    "<|channel|>analysis<|message|>I need the road distance in miles.<|end|>"
    "<|start|>assistant to=functions.road_distance<|channel|>commentary <|constrain|>json<|message|>"
    '{"origin": "Lyon", "destination": "Paris", "unit": "miles"}<|call|>',
    '<|channel|>analysis<|message|>The unit must be "mi".<|end|>'
    "<|start|>assistant to=functions.road_distance<|channel|>commentary <|constrain|>json<|message|>"
    '{"origin": "Lyon", "destination": "Paris", "unit": "mi"}<|call|>',
    "<|channel|>final<|message|>Lyon is about **243.6 miles** from Paris by road.<|return|>",
]


def make_engine(args: argparse.Namespace):
    if args.demo:
        return ScriptedEngine(DEMO)
    from gptoss_agent.model import load_engine

    return load_engine(args.model or os.environ["GPTOSS_MODEL"], progress=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("task", nargs="?", default="How far is Lyon from Paris by road, in miles?")
    p.add_argument("--model", help="checkpoint directory or server URL (default: $GPTOSS_MODEL)")
    p.add_argument("--demo", action="store_true", help="play a scripted model instead of loading one")
    args = p.parse_args(argv)
    agent = Agent(make_engine(args), [road_distance], reasoning_effort="low", max_steps=8)
    render = Renderer(Console())
    for event in agent.stream(args.task):
        render(event)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
