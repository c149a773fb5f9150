"""Shared fixtures: one tiny bundle, trained once per session the way users train it, for the suites that only need
a trained model (image network, text stages and query model)."""

import pytest
from helpers import TEXT, TINY_IMAGE, TINY_TEXT, TRAIN, cli, run_bundle


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """``run training`` on five phantom CTs, then ``run train_text`` on the shipped corpus, outputs outside the
    repository. Returns the directories, the overrides that point a run at them and both runs' logs."""
    root = tmp_path_factory.mktemp("tiny_bundle")
    dirs = {"phantom_dir": root / "phantom", "ckpt_dir": root / "models", "output_dir": root / "eval"}
    overrides = cli(dirs) + cli(TINY_IMAGE)
    image = run_bundle("run", "training", "--config_file", TRAIN, *overrides)
    text_overrides = ["--text_cache_dir", str(root / "cache"), *cli(TINY_TEXT)]
    text = run_bundle("run", "train_text", "--config_file", str([TRAIN, TEXT]), *overrides, *text_overrides)
    return {
        "root": root,
        "overrides": overrides,
        "image_log": image.stdout + image.stderr,
        "text_log": text.stdout + text.stderr,
        **dirs,
    }
