#!/usr/bin/env bash
# The full-size reliability runs behind docs/reliability.md: fuzzing (5,000 examples per case: 10,000
# fuzzed tool calls and 10,000 malformed JSON-RPC frames over HTTP and stdio, 5,000 hostile OpenAI
# requests), the hostile adapter / OpenAI / constraint findings, 64 sessions x 3 calls x 3 rounds, the
# shutdown / disconnect / fault tests, and the busy-CPU benchmark. About 17 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
LORAMUX_FUZZ_CALLS=${LORAMUX_FUZZ_CALLS:-5000} LORAMUX_LOAD_ROUNDS=${LORAMUX_LOAD_ROUNDS:-3} \
  .venv/bin/python -m pytest -s -q tests/e2e/test_fuzz.py tests/e2e/test_fuzz_openai.py tests/e2e/test_hostile_openai.py \
  tests/engine/llama/test_hostile_adapters.py tests/engine/llama/cpp/test_constraint_limits.py tests/e2e/test_load.py tests/e2e/test_shutdown.py \
  tests/e2e/test_http_security.py tests/engine/llama/test_adapters.py "tests/engine/llama/test_engine.py::test_a_step_that_raises_fails_its_own_requests_and_repeated_faults_rebuild_the_context" \
  tests/engine/llama/test_engine_fake.py "$@"
.venv/bin/python -m bench.bench_busy_cpu
