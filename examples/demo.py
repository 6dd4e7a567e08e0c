"""Placeholder demo: replaced by the real one.  Run via scripts/demo."""

import os

print("demo placeholder; LOOPGUARD_TEST_DSN =", os.environ.get("LOOPGUARD_TEST_DSN"))
