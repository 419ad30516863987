"""The Keras callbacks of a training run: checkpoints, the history log with its curves, the NaN guard
and the per-epoch timings."""

import math
import os
import time

import keras
import numpy as np

from lesion_unet import plots
from lesion_unet import runfolder


def averaged_weights(model):
    """Returns `model`'s weights with each trainable one replaced by the optimizer's moving average
    (`use_ema=True`), in `model.get_weights()` order; `None` when the optimizer keeps no average."""
    optimizer = getattr(model, "optimizer", None)
    if not getattr(optimizer, "use_ema", False) or not hasattr(optimizer, "_model_variables_moving_average"):
        return None
    average = {variable.path: mean for variable, mean in
               zip(optimizer._trainable_variables, optimizer._model_variables_moving_average)}
    return [keras.ops.convert_to_numpy(average.get(variable.path, variable)) for variable in model.weights]


def save_model(model, path):
    """Saves `model` to `path` atomically: a kill leaves the previous file or none, never half of one."""
    with runfolder.atomic_write(path) as tmp_path:
        model.save(tmp_path)


def float32_config(config):
    """Returns a copy of a model's `get_config()` whose layers compute in float32, whatever the dtype
    policy they were built under (`mixed_bfloat16`, `mixed_float16`).

    A model trained in mixed precision keeps float32 weights, so this is a change of arithmetic only.
    """
    if isinstance(config, list):
        return [float32_config(item) for item in config]
    if not isinstance(config, dict):
        return config
    if config.get("class_name") == "DTypePolicy" and str(config.get("config", {}).get("name", "")).startswith("mixed_"):
        return {**config, "config": {**config["config"], "name": "float32"}}
    return {key: float32_config(value) for key, value in config.items()}


def export_inference_model(model, path, weights=None):
    """Saves an uncompiled float32 copy of `model` (weights and architecture only), atomically.

    Without a compile config the file loads with `keras.saving.load_model(path)` in any process,
    whether or not this project's losses are importable there. A model trained in mixed precision is
    saved to compute in float32, so that it runs at full speed and precision on CPUs without native
    bfloat16 (and exports to ONNX) wherever it was trained.

    Args:
        model: the model.
        path: the `.keras` file.
        weights: the weights to save, in `model.get_weights()` order (default: the model's own).
    """
    clone = keras.Model.from_config(float32_config(model.get_config()))
    clone.set_weights(model.get_weights() if weights is None else weights)
    save_model(clone, path)


def _all_finite(weights):
    return all(np.isfinite(weight).all() for weight in weights)


class RunCheckpoint(keras.callbacks.Callback):
    """After each epoch: `best.keras` when validation Dice improves, then `last.keras` and `state.json`.

    Every file is written to a temporary name and renamed, so a kill at any moment leaves the
    previous complete files in place. An epoch whose loss or weights are not finite saves nothing:
    a diverged model is never a checkpoint.

    Args:
        run_dir: the run folder.
        best: best validation Dice so far (when resuming).
        best_epoch: its epoch number (1-based), or 0.
        on_first_save: called once, after the first `state.json` of this process is written.

    Attributes:
        saved: whether this process has written a checkpoint yet.
        diverged: whether an epoch ended with a non-finite loss or weight.
    """

    def __init__(self, run_dir, best=-math.inf, best_epoch=0, on_first_save=None):
        super().__init__()
        self.run_dir = run_dir
        self.best = best
        self.best_epoch = best_epoch
        self.on_first_save = on_first_save
        self.saved = False
        self.diverged = False

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        loss = logs.get("loss")
        weights = self.model.get_weights()
        best_weights = averaged_weights(self.model) or weights
        if (loss is not None and not math.isfinite(loss)) or not _all_finite(weights) \
                or (best_weights is not weights and not _all_finite(best_weights)):
            self.diverged = True
            return  # keep best.keras and last.keras at the last sound epoch
        value = logs.get("val_dice")
        if value is not None and math.isfinite(value) and value > self.best:
            self.best, self.best_epoch = float(value), epoch + 1
            export_inference_model(self.model, os.path.join(self.run_dir, runfolder.BEST), best_weights)
        save_model(self.model, os.path.join(self.run_dir, runfolder.LAST))
        runfolder.save_json({"epochs_done": epoch + 1, "best_val_dice": self.best, "best_epoch": self.best_epoch},
                            os.path.join(self.run_dir, runfolder.STATE))
        if not self.saved and self.on_first_save is not None:
            self.on_first_save()
        self.saved = True


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first batch whose loss is NaN or infinite, remembering where.

    Keras's `TerminateOnNaN` stops too, but keeps no record of the epoch, batch and loss for the
    run's final message.
    """

    def __init__(self):
        super().__init__()
        self.where = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.where = (self._epoch + 1, batch + 1, float(loss))
            self.model.stop_training = True


class HistoryLog(keras.callbacks.CSVLogger):
    """Appends each epoch to `history.csv`, numbered from 1 as the console and `state.json` count,
    then redraws `curves.png` from the whole file (earlier epochs of a resumed run included).

    Args:
        run_dir: the run folder.
        title: the figure's title.
        append: continue an existing `history.csv` (when resuming).
    """

    def __init__(self, run_dir, title, append=False):
        super().__init__(os.path.join(run_dir, runfolder.HISTORY), append=append)
        self.run_dir, self.title = run_dir, title

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch + 1, logs)
        history = plots.read_history(self.filename)
        if history:
            plots.save_curves(history, os.path.join(self.run_dir, runfolder.CURVES), self.title)


class EpochTiming(keras.callbacks.Callback):
    """Adds wall-clock timings to each epoch's logs, and so to `history.csv`.

    They are what README's time-to-accuracy numbers are read from:

    - `elapsed_s`: seconds from `start` (when the run began) to the end of the epoch.
    - `train_s`, `val_s`: the epoch's training and validation wall time.
    - `steps_s`: the sum of its training step times; `step_max_s`: the slowest step.
    - `stall_s`: `train_s - steps_s`, time the training loop spent outside its steps (waiting for
      input between steps, epoch-end stalls).

    Args:
        start: `time.perf_counter()` value at which the run started.
    """

    KEYS = ("elapsed_s", "train_s", "val_s", "steps_s", "step_max_s", "stall_s")

    def __init__(self, start):
        super().__init__()
        self.start = start
        self._steps = []

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._steps = []
        self._val_start = None

    def on_train_batch_begin(self, batch, logs=None):
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._steps.append(time.perf_counter() - self._step_start)

    def on_test_begin(self, logs=None):
        if self._val_start is None and self._steps:  # validation inside fit(), not evaluate()
            self._val_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self._steps:
            return
        now = time.perf_counter()
        train_end = self._val_start or now
        train_s = train_end - self._epoch_start
        logs["elapsed_s"] = now - self.start
        logs["train_s"] = train_s
        logs["val_s"] = now - train_end
        logs["steps_s"] = sum(self._steps)
        logs["step_max_s"] = max(self._steps)
        logs["stall_s"] = train_s - logs["steps_s"]


class TimeBudget(keras.callbacks.Callback):
    """Fits a run into a wall-clock budget, from its start to its test report, on any machine.

    At the end of the epoch `plan_at` (after the warm-up, once epochs run at their steady speed) it
    counts how many more epochs of that epoch's length fit before the budget runs out, keeping time
    for the test report; when fewer than planned fit, the run is cut to that many: the cosine
    learning-rate schedule is re-planned to end with the new last epoch (so the model still anneals),
    and `on_replan` records the new plan (config.json, for `--resume`). Later, an epoch that would
    overrun the budget is not started. `EpochTiming` must come before it (it reads `train_s`, `val_s`,
    `elapsed_s` from the logs).

    Args:
        budget_s: the budget, in seconds from the run's start.
        planned_epochs: the epochs asked for; the run never gets more.
        plan_at: the epoch (1-based) after which the plan is made.
        make_schedule: `epochs -> LearningRateSchedule` for a run of that many epochs.
        test_share: test images per validation image; the test report is reserved twice the
            validation time per image, as it scores at the masks' own size and draws a figure.
        on_replan: called with the new number of epochs when the run is cut.

    Attributes:
        epochs: the run's epochs as now planned.
        stopped_early: the epoch after which the budget stopped the run outside the plan, or `None`.
    """

    def __init__(self, budget_s, planned_epochs, plan_at, make_schedule, test_share=1.0, on_replan=None):
        super().__init__()
        self.budget_s = budget_s
        self.planned_epochs = self.epochs = planned_epochs
        self.plan_at = plan_at
        self.make_schedule = make_schedule
        self.test_share = test_share
        self.on_replan = on_replan
        self.stopped_early = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if "elapsed_s" not in logs:
            return
        done = epoch + 1
        epoch_s = max(logs["train_s"] + logs["val_s"], 1e-9)
        left_s = self.budget_s - logs["elapsed_s"] - 2 * logs["val_s"] * self.test_share
        if done == self.plan_at and done < self.epochs:
            fitting = max(0, math.floor(left_s / epoch_s))
            if done + fitting < self.epochs:
                self.epochs = done + fitting
                print(f"\ntime budget: {self.budget_s / 60:.3g} min; epoch {done} took {epoch_s / 60:.1f} min, so "
                      f"this run trains {self.epochs} epochs instead of the planned {self.planned_epochs} (the "
                      "learning rate now decays to 0 at its last epoch; --time-budget 0 trains them all)")
                self.params["epochs"] = self.epochs  # shared by the callbacks: the progress line's "Epoch i/N"
                if self.epochs > done:
                    self.model.optimizer.learning_rate = self.make_schedule(self.epochs)
                    self.model.make_train_function(force=True)  # the schedule is traced into the step
                if self.on_replan is not None:
                    self.on_replan(self.epochs)
        if done >= self.epochs:
            self.model.stop_training = True
        elif left_s < epoch_s:
            self.model.stop_training = True
            self.stopped_early = done
            print(f"\ntime budget: {self.budget_s / 60:.3g} min; another epoch ({epoch_s / 60:.1f} min) would "
                  f"overrun it, so training stops after epoch {done} of {self.epochs}; `--resume` continues it")


class ProgressWithoutTimings(keras.callbacks.ProgbarLogger):
    """Keras's progress output, without `EpochTiming`'s columns (they go to `history.csv`), counting
    epochs to the number `TimeBudget` planned."""

    def set_params(self, params):
        super().set_params(params)
        self.params = params  # Keras's own keeps only a copy of its epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs = self.params["epochs"]
        super().on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, {k: v for k, v in (logs or {}).items() if k not in EpochTiming.KEYS})
