"""Tools: the tool protocol, ``@tool``, the browser and the python tool."""
