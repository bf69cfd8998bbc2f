"""loramux's tests: engine/ (unit, per package), contract/ (every backend), mcp_server/ (front ends
in-process), e2e/ (subprocesses on the real model), bench/. Shared helpers sit here."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout
