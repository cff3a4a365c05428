"""One progress bar per training, with the loss in its postfix.

transformers' ``ProgressCallback`` prints every logged dictionary (``{'loss': …,
'grad_norm': …, 'learning_rate': …}``) as its own line under the bar: a short run printed about
80 of them. ``LossBar`` keeps the bar and puts the latest loss (and the last validation score)
in its postfix instead; the full history is still in ``trainer.state.log_history``, which the
recipes log to MLflow as the ``train.loss`` series.
"""

from __future__ import annotations

from typing import Any

from transformers import ProgressCallback

#: Logged keys shown in the bar's postfix, in this order (the rest stay in the log history).
SHOWN = ("loss", "eval_loss")


class LossBar(ProgressCallback):
    """transformers' progress bar, titled, with the loss in its postfix and no printed logs."""

    def __init__(self, title: str) -> None:
        """A bar titled ``title`` (the stage: ``train lora``, ``trial 2``…)."""
        super().__init__()
        self.title = title
        self.postfix: dict[str, str] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Open the bar, titled."""
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.set_description(self.title)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """Show the logged loss and validation scores in the postfix (nothing is printed)."""
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        for key, value in logs.items():
            scored = key.startswith("eval_") and key not in ("eval_runtime", "eval_loss")
            shown = key in SHOWN or (scored and not key.endswith("_per_second"))
            if shown and isinstance(value, int | float):
                self.postfix[key.removeprefix("eval_") if scored else key] = f"{value:.4g}"
        self.training_bar.set_postfix(self.postfix, refresh=True)


def show_progress(trainer: Any, title: str) -> Any:
    """Swap ``trainer``'s default progress callback for a ``LossBar``; returns the trainer."""
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(LossBar(title))
    return trainer
