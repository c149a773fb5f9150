"""Shared test set-up: the bundle's `scripts` package is importable, as it is when MONAI runs the bundle."""

import sys

from bundle_paths import BUNDLE_ROOT

if BUNDLE_ROOT not in sys.path:
    sys.path.insert(1, BUNDLE_ROOT)
