import pytest
import torch
from torch import nn

from sbiflow.training import TrainingConfig, TrainingDivergedError, train


class Quadratic(nn.Module):
    """loss = (w - a)² per sample: the optimum is w = mean(a)."""

    def __init__(self, nan_after_calls: int | None = None):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.calls, self.nan_after_calls = 0, nan_after_calls

    def loss(self, a, b):
        self.calls += 1
        loss = ((self.w - a[:, 0]) ** 2) + 0 * b[:, 0]
        if self.nan_after_calls is not None and self.calls > self.nan_after_calls:
            loss = loss * float("nan")
        return loss


def test_converges_and_keeps_best_weights():
    a = 3.0 + torch.randn(2000, 1, generator=torch.Generator().manual_seed(0))
    model = Quadratic()
    history = train(
        model, a, torch.zeros(2000, 1), TrainingConfig(learning_rate=0.05, progress=False)
    )
    assert float(model.w.detach()) == pytest.approx(3.0, abs=0.1)
    assert len(history.train_loss) == len(history.val_loss) > history.best_epoch >= 0
    assert history.val_loss[history.best_epoch] == min(history.val_loss)


def test_trains_even_where_the_caller_turned_gradients_off():
    """BayesFlow's torch backend turns autograd off process-wide on import; fit must not care."""
    a = 3.0 + torch.randn(2000, 1, generator=torch.Generator().manual_seed(0))
    model = Quadratic()
    with torch.no_grad():
        train(model, a, torch.zeros(2000, 1), TrainingConfig(learning_rate=0.05, progress=False))
    assert float(model.w.detach()) == pytest.approx(3.0, abs=0.1)


def test_early_stopping_stops_after_patience():
    a = torch.randn(500, 1)
    history = train(
        Quadratic(),
        a,
        torch.zeros(500, 1),
        TrainingConfig(learning_rate=0.05, stop_after_epochs=3, lr_decays=0, progress=False),
    )
    assert len(history.val_loss) == history.best_epoch + 1 + 3


def test_learning_rate_decay_goes_on_from_the_best_weights_and_never_does_worse():
    a, b = torch.randn(500, 1), torch.zeros(500, 1)
    runs = {}
    for decays in (0, 1):
        config = TrainingConfig(
            learning_rate=0.5, stop_after_epochs=3, lr_decays=decays, progress=False
        )
        runs[decays] = train(Quadratic(), a, b, config)
    assert len(runs[1].val_loss) > len(runs[0].val_loss)
    assert min(runs[1].val_loss) <= min(runs[0].val_loss)
    assert runs[1].val_loss[: len(runs[0].val_loss)] == runs[0].val_loss


def test_nan_loss_raises_and_restores_best_weights():
    a = 3.0 + torch.randn(1000, 1)
    model = Quadratic(nan_after_calls=200)
    with pytest.raises(TrainingDivergedError, match="learning rate"):
        train(model, a, torch.zeros(1000, 1), TrainingConfig(learning_rate=0.05, progress=False))
    assert torch.isfinite(model.w).all() and float(model.w.detach()) > 1.0


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="validation_fraction"):
        TrainingConfig(validation_fraction=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        TrainingConfig(batch_size=0)
    with pytest.raises(ValueError, match="Too few samples"):
        train(Quadratic(), torch.zeros(2, 1), torch.zeros(2, 1), TrainingConfig(progress=False))


@pytest.mark.parametrize("value", [None, 0, 2.5, True])
def test_epoch_limits_must_be_positive_ints(value):
    with pytest.raises(ValueError, match="max_epochs must be a positive int"):
        TrainingConfig(max_epochs=value)
    with pytest.raises(ValueError, match="stop_after_epochs must be a positive int"):
        TrainingConfig(stop_after_epochs=value)
