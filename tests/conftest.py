"""Shared test set-up: the bundle's `scripts` package is importable, as it is when MONAI runs the bundle."""

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE_ROOT = os.path.join(REPO_ROOT, "bundle")
if BUNDLE_ROOT not in sys.path:
    sys.path.insert(1, BUNDLE_ROOT)
