"""Test-wide settings: unit tests and notebooks (nbval) run in the quick profile with a fresh cache."""

import os
import tempfile

os.environ.setdefault("LABKIT_PROFILE", "quick")
os.environ.setdefault("LABKIT_CACHE", tempfile.mkdtemp(prefix="labkit-test-cache-"))
os.environ.setdefault("MPLBACKEND", "Agg")
