"""The CLI's MCP flags: ``--mcp 'COMMAND ARGS'``, ``--mcp URL``, ``--mcp-config FILE`` and the
``mcp-server`` subcommand; servers are started before any model is loaded."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
from gptoss_agent.agent.cli import UserError, build_mcp_servers, main

SERVER = str(Path(__file__).with_name("mcp_test_server.py"))


def test_mcp_flags_build_connected_servers(tmp_path):
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"calc": {"command": sys.executable, "args": [SERVER]}}}))
    command = shlex.join([sys.executable, SERVER])
    servers = build_mcp_servers([command, command], str(config))
    try:
        assert [s.name for s in servers] == ["test_server", "test_server_2", "calc"]  # numbered, not clashing
        assert servers[1].spec.name == "test_server_2"
        assert all(s.server_info is not None for s in servers)  # started and listed already
        assert "add" in [f.name for f in servers[2].spec.functions]
    finally:
        for s in servers:
            s.close()


def test_a_broken_mcp_server_is_one_sentence_before_the_model_loads(capsys, tmp_path):
    code = main(
        ["--tools", "none", "--model", str(tmp_path / "no-model"), "--mcp", "/nonexistent/mcp x", "hi"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        "gptoss-agent: The MCP server '/nonexistent/mcp x' could not be started: "
        "no such command: /nonexistent/mcp.\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mcp-config", "/nonexistent.json"], "cannot read the MCP configuration /nonexistent.json"),
        (["--mcp", "'unclosed"], '--mcp "\'unclosed": No closing quotation'),
        (["--mcp", "ftp://host/mcp"], "The MCP server 'ftp://host/mcp' could not be started"),
    ],
)
def test_bad_mcp_flags(capsys, argv, message):
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        build_mcp_servers(
            argv[1:] if argv[0] == "--mcp" else [], argv[1] if argv[0] == "--mcp-config" else None
        )
    assert main(["--tools", "none", *argv, "hi"]) == 2
    assert capsys.readouterr().err.startswith("gptoss-agent: " + message)


def test_mcp_server_subcommand_is_dispatched(capsys):
    with pytest.raises(SystemExit) as info:
        main(["mcp-server", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: gptoss-agent mcp-server") and "--http PORT" in out
    assert main(["mcp-server", "--http", "0"]) == 2
