"""One progress bar per stage and its one-line summary, on a real (tiny) MONAI trainer with a validator."""

import io
import logging
import re

import torch
from ignite.metrics import Accuracy
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import ValidationHandler
from torch.utils.data import DataLoader, TensorDataset

from medsora.progress import StageProgress


def tiny_run(epochs=4):
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    y = (x[:, 0] > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    network = torch.nn.Linear(4, 2)

    def prepare(batch, device=None, non_blocking=False, **_):
        return batch[0].to(device), batch[1].to(device)

    def stacked(output):
        return torch.stack([torch.as_tensor(o["pred"]) for o in output]), torch.as_tensor(
            [int(o["label"]) for o in output]
        )

    evaluator = SupervisedEvaluator(
        device="cpu",
        val_data_loader=loader,
        network=network,
        prepare_batch=prepare,
        key_val_metric={"val_accuracy": Accuracy(output_transform=stacked)},
    )
    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=epochs,
        train_data_loader=loader,
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.5),
        loss_function=torch.nn.CrossEntropyLoss(),
        prepare_batch=prepare,
        train_handlers=[ValidationHandler(validator=evaluator, interval=1)],
    )
    stream = io.StringIO()
    StageProgress("toy", validator=evaluator, stream=stream).attach(trainer)
    trainer.run()
    return trainer, evaluator, stream.getvalue()


def test_one_summary_line_with_loss_and_best_metric():
    trainer, evaluator, text = tiny_run()
    lines = text.splitlines()
    assert len(lines) == 1, text  # no bar off a terminal: only the summary
    match = re.fullmatch(
        r"toy: 4 epochs in \d+ s; loss ([\d.]+) -> ([\d.]+); best val_accuracy ([\d.]+) at epoch (\d)", lines[0]
    )
    assert match, lines[0]
    first, last, best, epoch = float(match[1]), float(match[2]), float(match[3]), int(match[4])
    assert last < first
    assert best == round(evaluator.state.best_metric, 3) and epoch == evaluator.state.best_metric_epoch


def test_the_trainers_own_epoch_lines_are_quiet():
    trainer, evaluator, _ = tiny_run(epochs=1)
    assert trainer.logger.level == logging.WARNING and evaluator.logger.level == logging.WARNING
