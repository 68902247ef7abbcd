"""Tools: the tool protocol, ``@tool``, the browser, the python tool and MCP servers."""

from gptoss_agent.tools.base import (
    FunctionSpec,
    NamespaceSpec,
    Tool,
    ToolError,
    ToolOutput,
    call_in_thread,
    run_coroutine,
)
from gptoss_agent.tools.browser import Browser, Citation
from gptoss_agent.tools.fetch import FetchConfig
from gptoss_agent.tools.function import FunctionTool, Toolset, to_text, tool
from gptoss_agent.tools.mcp import MCPConnectionError, MCPServer, load_mcp_config
from gptoss_agent.tools.python import Python
from gptoss_agent.tools.search import SearchBackend, SearchError, SearchResult, get_backend
from gptoss_agent.tools.toolbox import Route, Toolbox

__all__ = [
    "Browser",
    "Citation",
    "FetchConfig",
    "FunctionSpec",
    "FunctionTool",
    "MCPConnectionError",
    "MCPServer",
    "NamespaceSpec",
    "Python",
    "Route",
    "SearchBackend",
    "SearchError",
    "SearchResult",
    "Tool",
    "ToolError",
    "ToolOutput",
    "Toolbox",
    "Toolset",
    "call_in_thread",
    "get_backend",
    "load_mcp_config",
    "run_coroutine",
    "to_text",
    "tool",
]
