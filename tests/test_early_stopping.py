"""Early stopping of a text stage on its validation loss: it stops, and the saved weights are the best epoch's."""

import json

import pytest
import torch
from monai.handlers import CheckpointSaver
from torch.utils.data import DataLoader

from medsora.text.early_stopping import ValidationEarlyStopping
from medsora.text.training import TextStageTrainer, pair_dataset


def overfitting_run(tmp_path, patience, max_epochs=40):
    """A wide MLP fitting random labels: its validation loss on labels of a simple rule falls, then rises."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 8, generator=generator)
    rule = (inputs[:, :1] > 0).float()
    targets = torch.where(torch.rand(64, 1, generator=generator) < 0.4, 1.0 - rule, rule)  # 40 % flipped
    validation = torch.randn(200, 8, generator=generator)
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(8, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
    loss = torch.nn.BCEWithLogitsLoss()
    stopper = ValidationEarlyStopping(validation, (validation[:, :1] > 0).float(), loss, patience=patience)
    saver = CheckpointSaver(str(tmp_path), {"net": network}, save_final=True, final_filename="net.pt")
    trainer = TextStageTrainer(
        stage="text",
        seed=0,
        history_dir=str(tmp_path),
        max_epochs=max_epochs,
        device="cpu",
        train_data_loader=DataLoader(pair_dataset(inputs, targets), batch_size=16, shuffle=True),
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), 1e-2),
        loss_function=loss,
        train_handlers=[stopper, saver],
    )
    trainer.run()
    return trainer, stopper, network


def test_training_stops_and_keeps_the_best_epoch(tmp_path):
    trainer, stopper, network = overfitting_run(tmp_path, patience=5)
    history = stopper.history
    assert len(history) < 40 and trainer.state.epoch == len(history)
    assert stopper.best_epoch == 1 + min(range(len(history)), key=history.__getitem__)
    assert len(history) == stopper.best_epoch + 5 and history[-1] > stopper.best_loss
    saved = torch.nn.Sequential(torch.nn.Linear(8, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
    saved.load_state_dict(torch.load(tmp_path / "net.pt", weights_only=True))
    assert stopper.validation_loss(saved, "cpu") == pytest.approx(stopper.best_loss)
    assert stopper.validation_loss(network, "cpu") == pytest.approx(stopper.best_loss)
    losses = json.loads((tmp_path / "text_loss.json").read_text())["epoch_loss"]
    assert len(losses) == len(history)


def test_without_patience_every_epoch_runs_and_the_best_is_kept(tmp_path):
    trainer, stopper, _ = overfitting_run(tmp_path, patience=None, max_epochs=15)
    assert trainer.state.epoch == 15 and stopper.best_epoch < 15
    with pytest.raises(ValueError, match="patience must be >= 1"):
        ValidationEarlyStopping(torch.zeros(2, 1), torch.zeros(2, 1), torch.nn.MSELoss(), patience=0)
