"""Where a run reports: a Megatron-style log line, a metrics JSONL and TensorBoard events.

Only rank 0 writes. The JSONL holds one line per iteration (``iteration``, ``loss`` at full float
precision, ``lr``, ``grad_norm``, ``stage``, ``msg_mask``, ``tokens_per_s`` of tokens that are not
padding, ``tflops_per_device``, ``mfu``, ``timers_ms``, ``tokens`` trained so far) and one per
evaluation (``eval_loss``). A resumed run first drops the lines past the iteration it resumes
from, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

TIMERS = ("forward-backward", "optimizer", "batch-generator", "save-checkpoint")
"""Megatron-LM's timer names: each iteration's milliseconds in ``timers_ms`` (a save's in the
iteration after it), their means over the log interval on the log line."""


class Metrics:
    def __init__(
        self,
        metrics_file: str | None,
        tensorboard_dir: str | None,
        log_interval: int,
        total_iters: int,
        enabled: bool,
    ) -> None:
        self.enabled = enabled
        self.log_interval = max(log_interval, 1)
        self.total = total_iters
        self.path = Path(metrics_file) if metrics_file and enabled else None
        self.writer = None
        self.interval_ms: dict[str, list[float]] = {}
        if tensorboard_dir and enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(tensorboard_dir)

    def resume_at(self, iteration: int) -> None:
        """Forget lines a killed run wrote past its last checkpoint."""
        if self.path is None or not self.path.exists():
            return
        keep = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line).get("iteration", 0) <= iteration
        ]
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)

    def _append(self, record: dict) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def iteration(self, record: dict) -> None:
        """Report one training iteration."""
        if not self.enabled:
            return
        self._append(record)
        it = record["iteration"]
        for name, ms in record.get("timers_ms", {}).items():
            self.interval_ms.setdefault(name, []).append(ms)
        if self.writer is not None:
            keys = (
                "loss",
                "lr",
                "grad_norm",
                "tokens_per_s",
                "tflops_per_device",
                "mfu",
                "msg_mask",
            )
            for key in keys:
                if record.get(key) is not None:
                    self.writer.add_scalar(f"train/{key}", record[key], it)
        if it % self.log_interval == 0 or it == self.total:
            mask = record.get("msg_mask")
            grad = record.get("grad_norm")
            print(
                f" iteration {it:8d}/{self.total:8d} | stage {record['stage']} | "
                f"lm loss {record['loss']:.6E} | lr {record['lr']:.3E} | "
                f"grad norm {grad if grad is None else f'{grad:.3f}'} | "
                f"tokens/s {record['tokens_per_s']:.1f} | "
                f"TFLOP/s/device {record['tflops_per_device']:.3g}"
                + ("" if record.get("mfu") is None else f" | MFU {record['mfu']:.1%}")
                + ("" if mask is None else f" | msg mask {mask:.3f}"),
                flush=True,
            )
            means = {k: sum(v) / len(v) for k, v in self.interval_ms.items() if any(v)}
            if means:
                shown = " | ".join(f"{k}: {v:.2f}" for k, v in means.items())
                print(f"    (ms, mean per iteration) {shown}", flush=True)
            self.interval_ms = {}

    def evaluation(self, iteration: int, loss: float) -> None:
        if not self.enabled:
            return
        self._append({"iteration": iteration, "eval_loss": loss})
        if self.writer is not None:
            self.writer.add_scalar("valid/loss", loss, iteration)
        print(f" validation at iteration {iteration} | lm loss {loss:.6E}", flush=True)

    def event(self, message: str) -> None:
        """A one-off line (stage changes, saves, resumes)."""
        if self.enabled:
            print(f" [{message}]", flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
