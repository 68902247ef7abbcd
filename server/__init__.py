"""Servers: thin adapters from wire formats to the agent's tools and sessions.

``gptoss_agent.server.mcp`` offers the browser and the python sandbox as an MCP server
(``gptoss-agent mcp-server``). Nothing is imported here: each server module loads its own
dependencies when it is used.
"""
