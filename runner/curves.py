"""A job's training curves, read back from the TensorBoard events under its run URI, and drawn.

Each trainer start writes its own event file, so the curves come in segments, one per attempt that
trained. After a preemption the next segment starts at the last checkpoint, before the step the
previous one reached: the overlap is the work done twice, which the picture shades."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runner import state as st
from trainer import contract

TRAIN_TAG, VAL_TAG = contract.TAG_TRAIN_LOSS, contract.TAG_VAL_LOSS


@dataclass
class Segment:
    label: str  # "attempt 2", or "start 2" when no attempt of the job matches the file's time
    created: float  # unix seconds: when the trainer opened the event file
    resumed_from: int | None = None  # the checkpoint it started from: the last one the attempt before wrote
    train: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    val: list[tuple[int, float]] = field(default_factory=list)

    @property
    def first_step(self) -> int | None:
        steps = [s for s, _ in self.train + self.val]
        return min(steps) if steps else None

    @property
    def last_step(self) -> int | None:
        steps = [s for s, _ in self.train + self.val]
        return max(steps) if steps else None

    @property
    def resume_step(self) -> int:
        """The step it resumed from: its attempt's checkpoint; else (about) its first logged step."""
        return self.resumed_from if self.resumed_from is not None else (self.first_step or 1) - 1

    def to_dict(self, redone: int) -> dict:
        return {"label": self.label, "created": self.created, "first_step": self.first_step,
                "last_step": self.last_step, "train": self.train, "val": self.val, "redone_steps": redone}


def read_segments(run_uri: str, attempts: list[st.AttemptRow] | None = None) -> list[Segment]:
    """The segments under ``run_uri``, oldest first; empty when nothing was logged yet."""
    from runner.tbscalars import file_created, scalars
    from trainer import contract
    from trainer.storage import open_storage

    storage = open_storage(run_uri)
    files = sorted((file_created(k) or 0.0, k) for k in storage.list(contract.TENSORBOARD_DIR + "/")
                   if "tfevents" in k)
    segments = []
    for n, (created, key) in enumerate(files, 1):
        data = storage.get_bytes(key) or b""
        attempt = _attempt_of(created, attempts or [])
        before = [a for a in attempts or [] if attempt and a.number < attempt.number and a.started is not None]
        resumed_from = max(before, key=lambda a: a.number).last_checkpoint_step if before else None
        seg = Segment(f"attempt {attempt.number}" if attempt else f"start {n}", created, resumed_from)
        for s in scalars(data, {TRAIN_TAG, VAL_TAG}):
            (seg.train if s.tag == TRAIN_TAG else seg.val).append((s.step, s.value))
        if seg.train or seg.val:
            segments.append(seg)
    return segments


def redone_steps(segments: list[Segment]) -> list[int]:
    """Per segment: the steps it trained again that the one before had already done."""
    out, reached = [], None
    for seg in segments:
        # The previous segments' last logged step: what they reached, to within a logging interval.
        out.append(max(0, reached - seg.resume_step) if reached is not None else 0)
        if seg.last_step is not None:
            reached = max(reached or 0, seg.last_step)
    return out


def _attempt_of(created: float, attempts: list[st.AttemptRow]) -> st.AttemptRow | None:
    """The attempt whose trainer opened an event file at ``created`` (whole seconds, from the file's
    name): the last one launched before then, and not ended before then."""
    started = [a for a in attempts if a.started is not None and a.started - 1 <= created
               and created <= (a.ended or float("inf")) + 1]
    return max(started, key=lambda a: a.started) if started else None


def plot_curves(segments: list[Segment], path: str | Path, title: str) -> Path:
    """Train loss per segment, validation loss as points, and the redone steps shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from runner.plot import save_figure

    fig, ax = plt.subplots(figsize=(10, 6), dpi=120)
    colors = plt.get_cmap("tab10").colors
    for i, (seg, redone) in enumerate(zip(segments, redone_steps(segments), strict=True)):
        color = colors[i % len(colors)]
        if seg.train:
            ax.plot([s for s, _ in seg.train], [v for _, v in seg.train], color=color, linewidth=1.4, alpha=0.9,
                    label=f"{seg.label}: train loss (steps {seg.first_step}–{seg.last_step})")
        resumed = seg.resumed_from if seg.resumed_from is not None else seg.first_step
        if i > 0 and resumed is not None:
            ax.axvline(resumed, color=color, linestyle=":", linewidth=1.2)
            ax.annotate(f"{seg.label} resumes at step {resumed}", (resumed, 0.0), xycoords=("data", "axes fraction"),
                        xytext=(3, 4), textcoords="offset points", rotation=90, fontsize=8, color=color,
                        va="bottom")
        if redone:  # steps resume_step+1 .. what the attempts before had reached
            reached = seg.resume_step + redone
            ax.axvspan(seg.resume_step + 1, reached, color="#d62728", alpha=0.12, linewidth=0)
            ax.annotate(f"{redone} steps redone", (reached, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(-4, -14), textcoords="offset points", ha="right", fontsize=8, color="#d62728")
    # Validation is one curve across attempts: every attempt evaluates the same held-out batches.
    val = sorted({s: v for seg in segments for s, v in seg.val}.items())
    if val:
        ax.plot([s for s, _ in val], [v for _, v in val], color="black", linestyle="--", marker="o", markersize=5,
                linewidth=1.0, label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, framealpha=0.9)
    fig.tight_layout()
    return save_figure(fig, path)
