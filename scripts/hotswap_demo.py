"""A hot-swap session: load two demo adapters into a running server, use them, swap, unload.

.venv/bin/python scripts/hotswap_demo.py                               # spawns `loramux` over stdio
.venv/bin/python scripts/hotswap_demo.py --url http://127.0.0.1:8000/mcp   # a running `loramux --http`
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

QUESTION = "Tell me about the ocean."


async def tool(client: Client, tool_name: str, /, **args: object) -> dict:
    result = await client.call_tool(tool_name, args, read_timeout_seconds=120)
    if result.is_error:
        raise SystemExit(f"{tool_name} failed: {result.content[0].text}")  # type: ignore[union-attr]
    return result.structured_content  # type: ignore[return-value]


async def ask(client: Client, label: str, **args: object) -> None:
    out = await tool(client, "llm_inference", prompt=QUESTION, max_tokens=60, temperature=0, **args)
    print(f"\n[{label}] {out['text']}")


async def session(target: str | StdioServerParameters) -> None:
    async with Client(target) as client:
        listing = await tool(client, "list_adapters")
        print("adapter files:", ", ".join(listing["available_files"]))
        print("loaded:", [a["name"] for a in listing["adapters"]] or "none")

        await ask(client, "base model")
        caps = await tool(client, "load_adapter", name="caps", path="caps.gguf")
        print(f"\nloaded caps: rank {caps['adapter']['rank']}, {caps['adapter']['file_size']} bytes")
        await ask(client, "caps", adapter="caps")

        await tool(client, "load_adapter", name="short", path="short.gguf")
        await ask(client, "short", adapter="short")
        await ask(client, "caps + short", adapters=[{"name": "caps"}, {"name": "short"}])

        gone = await tool(client, "unload_adapter", name="caps")
        print(f"\nunloaded caps after {gone['requests_served']} requests")
        print("loaded:", [a["name"] for a in (await tool(client, "list_adapters"))["adapters"]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running server's MCP endpoint (default: spawn one over stdio)")
    args = ap.parse_args()
    loramux = Path(sys.executable).with_name("loramux")
    anyio.run(session, args.url or StdioServerParameters(command=str(loramux), args=[]))


if __name__ == "__main__":
    main()
