"""Where the repository, the bundle and its configs are, for tests that run the bundle."""

import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE_ROOT = os.path.join(REPO_ROOT, "bundle")
CONFIGS = os.path.join(BUNDLE_ROOT, "configs")
TRAIN = os.path.join(CONFIGS, "train.yaml")
EVALUATE = os.path.join(CONFIGS, "evaluate.yaml")
INFERENCE = os.path.join(CONFIGS, "inference.yaml")
