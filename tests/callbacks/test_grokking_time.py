"""Train and validation thresholds count steps alike: the number of optimiser updates the measured weights had."""
from types import SimpleNamespace

import torch

from callbacks.run.grokking_time import GrokkingTime
from tests.conftest import metrics_rows
from tests.helpers import TrainAccuracyProbe


class RecordingLogger:
    def __init__(self):
        self.rows: list[tuple[int, dict]] = []

    def log_metrics(self, metrics, step):
        self.rows.append((step, metrics))


def fake_trainer(logger):
    return SimpleNamespace(global_step=0, log_every_n_steps=1, max_steps=100, callback_metrics={}, loggers=[logger],
                           sanity_checking=False, state=SimpleNamespace(fn="fit"), should_stop=False)


def test_the_same_weights_give_train_and_val_thresholds_the_same_step():
    # acc[k]: the accuracy of the weights after k updates; they first reach 0.99 after 7 updates
    acc = [0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.98, 1.0, 1.0, 1.0]
    grok, logger = GrokkingTime(val_thresholds=(0.99,)), RecordingLogger()
    trainer = fake_trainer(logger)
    for s in range(len(acc) - 1):
        # Lightning's order: step s + 1 runs its forward on the weights after s updates (train/acc), updates
        # them, ends the batch; then validation measures the weights after s + 1 updates, the same data here
        trainer.global_step = s + 1
        trainer.callback_metrics = {"train/acc": torch.tensor(acc[s])}
        grok.on_train_batch_end(trainer, None)
        trainer.callback_metrics = {"val/acc": torch.tensor(acc[s + 1])}
        grok.on_validation_end(trainer, None)
    assert grok.steps == {"grok/train_acc_0.99_step": 7, "grok/val_acc_0.99_step": 7}
    # each logged on the row of the metric that crossed it: train/acc of step 8 on row 7, val/acc after 7 on row 6
    assert sorted(logger.rows) == [(6, {"grok/val_acc_0.99_step": 7}), (7, {"grok/train_acc_0.99_step": 7})]


def test_in_a_run_the_recorded_steps_are_those_of_an_independent_measurement(run_config, one_thread):
    # validation on the training split, every step, and training metrics every step: both thresholds measure
    # the same weights on the same data; a probe evaluates the weights after k updates apart from the module
    summary, run_dir = run_config([
        "data._target_=tests.helpers.ValidatesOnTrain", "optimizer.lr=1e-2", "optimizer.warmup_steps=0",
        "trainer.max_steps=25", "trainer.val_check_interval=1", "trainer.log_every_n_steps=1",
        "+callbacks.probe._target_=tests.helpers.TrainAccuracyProbe"])
    accs = TrainAccuracyProbe.runs[-1].accs
    assert len(accs) == 25
    first = next(k for k, a in enumerate(accs) if a >= 0.99)  # updates the first weights at 0.99 had
    grok = summary["grok"]
    assert grok["grok/train_acc_0.99_step"] == grok["grok/val_acc_0.99_step"] == first
    for t in ("0.5", "0.9", "0.95"):
        assert grok[f"grok/val_acc_{t}_step"] == next(k for k, a in enumerate(accs) if k and a >= float(t))
    # metrics.csv: the train step's row is the one whose train/acc first reached 0.99 (row = steps done - 1)
    rows = metrics_rows(run_dir)
    crossed = min(int(r["step"]) for r in rows if r.get("train/acc") and float(r["train/acc"]) >= 0.99)
    marked = [int(r["step"]) for r in rows if r.get("grok/train_acc_0.99_step")]
    assert crossed == marked[0] == first
