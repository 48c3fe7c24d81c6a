"""The progress reporter: bars while an epoch runs, one summary line after it (rank 0 only)."""

from __future__ import annotations

import time
from typing import Any


class Reporter:
    """Progress bars and the per-epoch summary line; silent on ranks other than 0."""

    def __init__(self, enabled: bool, epochs: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console(stderr=True, quiet=not enabled)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("{task.fields[rate]:.1f} clips/s"),
                            TimeRemainingColumn(), console=self.console, disable=not enabled, transient=True)
        self.epochs, self.task, self.clips, self.started = epochs, None, 0, 0.0

    def start_epoch(self, epoch: int, batches: int) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(f"epoch {epoch}/{self.epochs}", total=batches, loss=float("nan"), rate=0.0)
        self.clips, self.started = 0, time.perf_counter()

    def on_batch(self, n: int, loss: float) -> None:
        self.clips += n
        rate = self.clips / max(time.perf_counter() - self.started, 1e-9)
        self.bar.update(self.task, advance=1, loss=loss, rate=rate)

    def end_epoch(self, record: dict[str, Any]) -> None:
        acc = record["val"]["accuracy"] if record["val"] else record["train"]["accuracy"]
        heads = "  ".join(f"{k} {v:.3f}" for k, v in acc.items())
        which = "val" if record["val"] else "train"
        dep = record.get("audio_dependence")
        follows = f"  map change with other audio {dep['map_change']:.3f}" if dep and dep["clips"] else ""
        accuracy = f"{which} acc  {heads}" if heads else (f"val loss {record['val']['loss']:.4f}" if record["val"] else "")
        self.console.print(f"epoch {record['epoch']}/{self.epochs}  loss {record['train']['loss']:.4f}  "
                           f"{accuracy}{follows}  lr {record['lr']:.0e}  {record['clips_per_second']:.1f} clips/s"
                           + ("  \\[best]" if record["best"] else ""), soft_wrap=True)
        if record.get("audio_dependence_warning"):
            self.console.print(record["audio_dependence_warning"], markup=False, highlight=False)
        if record["skip_report"]:
            self.console.print(record["skip_report"], markup=False, highlight=False)
