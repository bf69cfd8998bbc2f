"""loramux's MCP front end: tools over the engine, served on stdio or streamable HTTP."""
