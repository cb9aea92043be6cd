"""The job's side of the checkpoint protocol in a few lines (docs/jobs.md, "Your job").

::

    from node.jobs.jobkit import Checkpointer

    ckpt = Checkpointer()                 # reads the node's environment; handles SIGUSR1/SIGTERM
    state = ckpt.restore()                # the bytes of the checkpoint to resume from, or None
    ...                                   # rebuild your state from it
    ckpt.ready()                          # tell the node: restored, signals handled
    while not finished:
        train_one_step()
        ckpt.progress(step)               # cheap; sent at most every ``progress_every_s``
        if ckpt.due:                      # the node asked, or is stopping us
            ckpt.save(serialise(), progress=step)
            if ckpt.stopping:
                raise SystemExit(0)       # the node resumes us from that checkpoint later
    ckpt.done(step)

Saving happens only where the job calls ``save`` — a safe point of its own choosing, never
inside a signal handler.  ``save`` writes the bytes into the staging directory atomically
(temporary file, fsync, rename) and tells the node, which takes the file into its store.
Without a node (no ``UMBRA_*`` environment) every call is a no-op and ``restore`` returns
None, so the same script runs on a laptop.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

PROTOCOL = "1"


class Checkpointer:
    def __init__(self, *, progress_every_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        env = os.environ
        if env.get("UMBRA_PROTOCOL", PROTOCOL) != PROTOCOL:
            raise RuntimeError(f"node speaks checkpoint protocol {env['UMBRA_PROTOCOL']}, this job {PROTOCOL}")
        fd = env.get("UMBRA_CONTROL_FD", "")
        self._fd = int(fd) if fd else None
        staging = env.get("UMBRA_CHECKPOINT_DIR", "")
        self.staging = Path(staging) if staging else None
        restore = env.get("UMBRA_RESTORE_FROM", "")
        self.restore_path = Path(restore) if restore else None
        progress = env.get("UMBRA_RESTORE_PROGRESS", "")
        #: The progress of the checkpoint resumed from (0.0 for a fresh start).
        self.restored_progress = float(progress) if progress else 0.0
        self.job_id = env.get("UMBRA_JOB_ID", "")
        self._asked = False
        self.stopping = False
        self._saves = 0
        self._progress_every_s = progress_every_s
        self._clock = clock
        self._progress_at = -float("inf")
        if self._fd is not None:
            signal.signal(signal.SIGUSR1, self._on_usr1)
            signal.signal(signal.SIGTERM, self._on_term)

    @property
    def under_node(self) -> bool:
        return self._fd is not None

    def _on_usr1(self, signum: int, frame: FrameType | None) -> None:
        self._asked = True

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _say(self, line: str) -> None:
        if self._fd is not None:
            os.write(self._fd, (line + "\n").encode())  # < PIPE_BUF: one atomic write

    # -- the protocol ------------------------------------------------------------------

    def restore(self) -> bytes | None:
        """The checkpoint's bytes to resume from (read now: the node may prune it later)."""
        return self.restore_path.read_bytes() if self.restore_path is not None else None

    def ready(self) -> None:
        self._say("READY")

    @property
    def due(self) -> bool:
        """A checkpoint is wanted: the node asked for one, or is stopping the job."""
        return self._asked or self.stopping

    def progress(self, value: float) -> None:
        now = self._clock()
        if now - self._progress_at >= self._progress_every_s:
            self._progress_at = now
            self._say(f"PROGRESS {float(value)!r}")

    def save(self, data: bytes, *, progress: float) -> bool:
        """Write ``data`` as a checkpoint and hand it to the node (a no-op without one).

        False when it could not be written (the disk is full, say): the partial file is
        removed, the node is told (it raises an event; the earlier checkpoints are intact)
        and the job runs on, to try again at the next request."""
        self._asked = False
        if self.staging is None:
            return True
        self._saves += 1
        name = f"ckpt-{self._saves:08d}.bin"
        part = self.staging / f".part-{name}"
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(part, self.staging / name)
        except OSError as exc:
            part.unlink(missing_ok=True)
            self._say(f"SAVE_FAILED {exc.strerror or exc}"[:400])
            return False
        self._say(f"CHECKPOINT {name} {float(progress)!r}")
        return True

    def done(self, progress: float) -> None:
        if self._fd is not None:
            # A checkpoint asked for now is moot; and as Python exits it puts back the default
            # action of the signals it handled (termination), so a request arriving then would
            # kill a job that had finished.  Ignored signals stay ignored.
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        self._say(f"DONE {float(progress)!r}")


def results_dir() -> Path:
    """Where this job puts result files ground may ask for (``$UMBRA_RESULTS_DIR`` under a
    node, docs/jobs.md; ``./results`` without one)."""
    path = Path(os.environ.get("UMBRA_RESULTS_DIR", "results"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_result(path: Path | None, text: str) -> None:
    """Print a job's answer and, when ``path`` is given, write it there atomically too
    (a run killed while writing leaves the previous file, never half of this one)."""
    if path is not None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
    print(text, flush=True)
