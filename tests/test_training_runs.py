"""Training runs that must be reproducible: resuming from a checkpoint, and data-parallel training under torchrun."""

import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO_ROOT, TRAIN
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from monai.utils import set_determinism

from medsora.image import phantom


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    phantom.generate_phantom_dataset(str(root), num_cases=5, num_validation=2, seed=3)
    return str(root)


def train(dataset, ckpt_dir, epochs=3, stop_after=None, **overrides):
    """Train for ``epochs``; ``stop_after`` kills the run after that epoch, like an interrupted job."""
    workflow = ConfigWorkflow(
        config_file=TRAIN,
        workflow_type="train",
        run_id="training",
        dataset_dir=dataset,
        ckpt_dir=str(ckpt_dir),
        output_dir=str(ckpt_dir / "eval"),
        epochs=epochs,
        batch_size=2,
        **overrides,
    )
    workflow.initialize()
    if stop_after is not None:
        set_determinism(seed=workflow.parser["seed"])  # as the run list does before building the network
        trainer = workflow.parser.get_parsed_content("train#trainer")
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after), lambda engine: engine.terminate())
    workflow.run()
    workflow.finalize()
    return torch.load(ckpt_dir / f"checkpoint_epoch={stop_after or epochs}.pt", weights_only=False)


@pytest.mark.slow
def test_resumed_training_continues_exactly_like_an_uninterrupted_run(dataset, tmp_path):
    # a learning rate so small that the validation accuracy stays that of epoch 1: model.pt must stay epoch 1's
    slow = {"learning_rate": 1e-6}
    straight = train(dataset, tmp_path / "straight", **slow)
    interrupted = train(dataset, tmp_path / "interrupted", stop_after=2, **slow)
    resumed = train(
        dataset, tmp_path / "interrupted", resume_from=str(tmp_path / "interrupted" / "checkpoint_epoch=2.pt"), **slow
    )
    assert (
        resumed["trainer"]["iteration"] == straight["trainer"]["iteration"] == 3 * straight["trainer"]["epoch_length"]
    )
    for name, weight in straight["model"].items():
        torch.testing.assert_close(resumed["model"][name], weight, rtol=0, atol=0, msg=name)
    # the resumed run did train: epoch 3 moved the weights on from the interruption
    assert any(not torch.equal(interrupted["model"][n], w) for n, w in resumed["model"].items())
    # it knew the best validation score so far, and wrote every file as the uninterrupted run did, byte for byte:
    # model.pt (the best epoch's network, replaced only by a better one) and the last checkpoint, no stale one
    assert resumed["best_model"] == straight["best_model"]
    best = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    assert any(not torch.equal(best[n], w) for n, w in straight["model"].items())  # model.pt is not the last epoch
    files = {
        run: sorted(p.name for p in (tmp_path / run).iterdir() if p.is_file()) for run in ("straight", "interrupted")
    }
    assert files["straight"] == files["interrupted"] == ["checkpoint_epoch=3.pt", "image_gate.json", "model.pt"]
    for name in files["straight"]:
        assert (tmp_path / "straight" / name).read_bytes() == (tmp_path / "interrupted" / name).read_bytes(), name


@pytest.mark.slow
def test_data_parallel_training_under_torchrun(dataset, tmp_path):
    config = str([TRAIN, os.path.join(os.path.dirname(TRAIN), "multi_gpu_train.yaml")])
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        config,
        "--dataset_dir",
        dataset,
        "--ckpt_dir",
        str(tmp_path / "models"),
        "--output_dir",
        str(tmp_path / "eval"),
        "--epochs",
        "1",
        "--batch_size",
        "1",
        "--num_workers",
        "0",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    # rank 0 alone reports: one summary line
    assert (result.stdout + result.stderr).count("image network: 1 epoch in ") == 1
    checkpoint = torch.load(tmp_path / "models" / "checkpoint_epoch=1.pt", weights_only=False)
    # three training cases over two ranks: each runs two iterations (the sampler pads to an even split)
    assert checkpoint["trainer"]["iteration"] == 2
    assert not any(name.startswith("module.") for name in checkpoint["model"])  # saved unwrapped, loads anywhere
    assert (tmp_path / "models" / "model.pt").is_file()
