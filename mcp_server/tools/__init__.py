"""The MCP server and its tools: `llm_inference`, the adapter tools, their arguments and structured results."""
