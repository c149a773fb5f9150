"""What the suites share: where the bundle is, how a user runs it, and the tiny-run overrides that keep runs short."""

import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE_ROOT = os.path.join(REPO_ROOT, "bundle")
CONFIGS = os.path.join(BUNDLE_ROOT, "configs")
TRAIN = os.path.join(CONFIGS, "train.yaml")
TEXT = os.path.join(CONFIGS, "text.yaml")
EVALUATE = os.path.join(CONFIGS, "evaluate.yaml")
INFERENCE = os.path.join(CONFIGS, "inference.yaml")
ORGANS = ["liver", "pancreas", "kidney", "gallbladder", "spleen", "stomach", "adrenal_gland"]
#: organ -> label ids of the BTCV convention, the bundle's default
BTCV = {
    "liver": [6],
    "pancreas": [11],
    "kidney": [2, 3],
    "gallbladder": [4],
    "spleen": [1],
    "stomach": [7],
    "adrenal_gland": [12, 13],
}
# organ scores of one made-up answer, for the pictures' tests
SCORES = {
    "liver": 0.81,
    "pancreas": 0.12,
    "kidney": 0.33,
    "gallbladder": 0.64,
    "spleen": 0.05,
    "stomach": 0.27,
    "adrenal_gland": 0.5,
}

#: the image side on five small phantom CTs (two of them for validation), two epochs
TINY_IMAGE = {"phantom#num_cases": 5, "phantom#num_validation": 2, "epochs": 2, "batch_size": 3}
#: the text stages on the shipped corpus, short schedules
TINY_TEXT = {"anchor_epochs": 20, "text_epochs": 20, "gate_epochs": 20, "align_epochs": 10}


def cli(overrides: dict) -> list[str]:
    """``{"key": value}`` as ``monai.bundle run`` options: ``["--key", "value", ...]``."""
    return [item for key, value in overrides.items() for item in (f"--{key}", str(value))]


def run_bundle(*args, cwd=REPO_ROOT, check=True, timeout=900) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ARGS`` in a subprocess, as a user types it; ``check`` fails the test on an error."""
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"monai.bundle {args[:2]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result
