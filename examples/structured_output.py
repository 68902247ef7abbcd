"""Structured output: an answer that must satisfy a JSON Schema (harmony's response formats).

    python examples/structured_output.py --model /path/to/gpt-oss-20b/original
    python examples/structured_output.py --demo     # no model: a scripted engine

The schema goes into the developer message's ``# Response Formats`` section, the task asks for
that format, and the answer is parsed and validated with ``jsonschema``. When it does not fit,
the model is told exactly what is wrong and answers again (here the scripted model first forgets
a required field).
"""

from __future__ import annotations

import argparse
import json
import os

from gptoss_agent.agent import Agent, ScriptedEngine, Workflow

RECIPE = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "servings": {"type": "integer", "minimum": 1},
        "ingredients": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"item": {"type": "string"}, "grams": {"type": "number"}},
                "required": ["item", "grams"],
            },
        },
    },
    "required": ["name", "servings", "ingredients"],
}

DEMO = [
    '<|channel|>final<|message|>{"name": "Crêpes", "ingredients": [{"item": "flour", "grams": 250}]}<|return|>',
    '<|channel|>final<|message|>{"name": "Crêpes", "servings": 4, "ingredients": '
    '[{"item": "flour", "grams": 250}, {"item": "milk", "grams": 500}, {"item": "eggs", "grams": 150}]}<|return|>',
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="checkpoint directory or server URL (default: $GPTOSS_MODEL)")
    p.add_argument("--demo", action="store_true", help="play a scripted model instead of loading one")
    args = p.parse_args(argv)
    if args.demo:
        engine = ScriptedEngine(DEMO)
    else:
        from gptoss_agent.model import load_engine

        engine = load_engine(args.model or os.environ["GPTOSS_MODEL"], progress=True)
    agent = Agent(engine, reasoning_effort="low")
    flow = Workflow(agent).step(
        "recipe", "A simple crêpe recipe for four.", schema=RECIPE, description="A recipe with weights."
    )
    result = flow.run()["recipe"]
    print(json.dumps(result.data, ensure_ascii=False, indent=2))
    print(f"valid after {len(result.runs)} attempt(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
