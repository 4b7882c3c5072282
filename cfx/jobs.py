"""Training a category in the background: ``python -m cfx train`` (the same pipeline as the CLI)
in a child process at a low CPU priority, so that it survives page switches and reloads of the app,
can be cancelled, and leaves the app's own sessions their share of the machine.

A job writes its output to ``cache_dir()/jobs/<dataset>_<category>.log``; :meth:`TrainJob.status`
reads the process and the log (the last line is the progress bar or message of the current step).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfx import config
from cfx.reports.encode import safe_name

#: niceness of the child process (the app's sessions keep their share of the CPU)
NICE = 10
#: for the ETA only, from the 2-core CPU: the demo brick's card records 196 s for the AE, VAE and
#: classifier on 200 train images at the default 40 epochs; the latent ensemble and the concept
#: generator add about a minute
SECONDS_PER_IMAGE, FIXED_SECONDS = 1.0, 60.0
#: for the ETA only: PatchCore's fit per train image on the 2-core CPU at 128 px, its five fold banks
#: included (real bottle: 99 s for 209 images, screw 227 s for 320); it grows with about the 3.5th
#: power of the image side (BENCHMARKS.md)
PATCHCORE_SECONDS_PER_IMAGE = 0.5


def estimate_patchcore_seconds(n_train: int, image_size: int = config.IMAGE_SIZE) -> float:
    """A rough duration of ``cfx train --detector patchcore --image-size N`` (for the ETA)."""
    return 5.0 + PATCHCORE_SECONDS_PER_IMAGE * n_train * (image_size / 128) ** 3.5


def estimate_seconds(n_train: int, epochs: int = 40) -> float:
    """A rough duration of ``cfx train --detector vae`` for ``n_train`` images (for the ETA)."""
    return FIXED_SECONDS + SECONDS_PER_IMAGE * n_train * epochs / 40


@dataclass
class TrainJob:
    """One background ``cfx train`` run.

    Attributes:
        args: the command's arguments after ``train``.
        log: its output file.
        expected_seconds: an estimate of its duration (for the ETA), or None.
    """

    dataset: str
    category: str
    args: list[str]
    log: Path
    expected_seconds: float | None = None
    started: float = field(default_factory=time.time)
    proc: subprocess.Popen | None = field(default=None, repr=False)
    cancelled: bool = False

    @classmethod
    def start(cls, root: str | os.PathLike, category: str, dataset: str, detector: str = "vae",
              epochs: int | None = None, expected_seconds: float | None = None,
              image_size: int | None = None) -> "TrainJob":
        """Start ``python -m cfx train --data-root ROOT --category C --detector D`` in the background
        (with ``--epochs`` and ``--image-size`` when given)."""
        args = ["--data-root", str(root), "--category", category, "--detector", detector]
        if epochs is not None:
            args += ["--epochs", str(int(epochs))]
        if image_size is not None:
            args += ["--image-size", str(int(image_size))]
        log = config.cache_dir() / "jobs" / f"{safe_name(f'{dataset}_{category}')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        job = cls(dataset, category, args, log, expected_seconds)
        nice = ["nice", "-n", str(NICE)] if shutil.which("nice") else []
        with open(log, "wb") as out:
            job.proc = subprocess.Popen(
                [*nice, sys.executable, "-m", "cfx", "train", *args], cwd=config.PROJECT_ROOT, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return job

    @property
    def detector(self) -> str:
        """The ``--detector`` the job fits."""
        return self.args[self.args.index("--detector") + 1]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cancel(self) -> None:
        """Stop the run (its process group); what it wrote atomically before stays valid."""
        if self.running:
            self.cancelled = True
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def last_line(self) -> str:
        """The log's last non-empty line (tqdm's carriage returns split lines too)."""
        try:
            tail = self.log.read_bytes()[-4096:].decode(errors="replace")
        except OSError:
            return ""
        lines = [x.strip() for x in re.split(r"[\r\n]+", tail) if x.strip()]
        return lines[-1] if lines else ""

    def status(self) -> dict[str, Any]:
        """``state`` (running, done, failed, cancelled), ``elapsed``, ``eta`` (seconds or None),
        ``returncode`` and the log's ``last_line``."""
        code = None if self.proc is None else self.proc.poll()
        elapsed = time.time() - self.started
        state = "running" if code is None else "cancelled" if self.cancelled else "done" if code == 0 else "failed"
        eta = None
        if state == "running" and self.expected_seconds:
            eta = max(0.0, self.expected_seconds - elapsed)
        return {"state": state, "elapsed": elapsed, "eta": eta, "returncode": code, "last_line": self.last_line()}
