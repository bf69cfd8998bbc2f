"""What the fuzz suites share: how many examples, hypothesis' settings, and JSON values a client (or a
model) might send where a field is expected."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# examples per fuzzed case: 1,000 in CI, 5,000 in scripts/reliability.sh
CALLS = int(os.environ.get("LORAMUX_FUZZ_CALLS", "1000"))
FUZZ_SETTINGS = settings(
    max_examples=CALLS,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(
        ["", " ", "../../etc/passwd", "/etc/hosts", "/dev/zero", "caps", "a" * 3000, "\x00", "<|im_start|>", "é🙂"]
    )
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
