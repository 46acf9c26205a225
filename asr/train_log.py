"""Training logs: a CSV file always, TensorBoard too when the tensorboard package is installed."""

import csv
from pathlib import Path

try:
    from torch.utils.tensorboard import SummaryWriter as _SummaryWriter

    SummaryWriter: type | None = _SummaryWriter
except ImportError:  # tensorboard is optional
    SummaryWriter = None

FIELDS = ("step", "epoch", "split", "loss", "lr", "grad_norm", "dropped", "seconds")  # dropped: see asr.train


class TrainingLog:
    """Rows of FIELDS in `<directory>/log.csv` (and TensorBoard scalars under `<directory>/tensorboard`).

    `resume_at(step)` drops rows written after that step, so a resumed run does not log its steps twice.
    """

    def __init__(self, directory: Path):
        self.path, tensorboard = self.files(directory)
        self.tensorboard = SummaryWriter(tensorboard) if SummaryWriter else None

    @staticmethod
    def files(directory: Path) -> tuple[Path, Path]:
        """The CSV file and the TensorBoard folder of a run directory."""
        return Path(directory) / "log.csv", Path(directory) / "tensorboard"

    def resume_at(self, step: int) -> None:
        if self.path.exists():
            with open(self.path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["step"]) <= step]
            self._write(kept, "w")

    def write(self, **row) -> None:
        self._write([row], "a")
        if self.tensorboard:
            for key in ("loss", "lr", "grad_norm"):
                if row.get(key) is not None:
                    self.tensorboard.add_scalar(f"{row['split']}/{key}", row[key], row["step"])

    def _write(self, rows: list[dict], mode: str) -> None:
        new = mode == "w" or not self.path.exists()
        with open(self.path, mode, newline="") as f:
            writer = csv.DictWriter(f, FIELDS)
            if new:
                writer.writeheader()
            writer.writerows(rows)

    def close(self) -> None:
        if self.tensorboard:
            self.tensorboard.close()
