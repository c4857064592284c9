"""What a gate says of a stage's output: the result of its suite, the error a failed one raises and
the exit code that stops DVC and Airflow there. The runner takes the gate itself as an argument
(:data:`Validator`); the Great Expectations side lives in :mod:`spark_jobs.quality.gate`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXIT_GATE_FAILED = 3


class GateFailed(RuntimeError):
    """A stage's output failed its suite; nothing was published."""

    def __init__(self, stage: str, report: Path, rejected: Path, summary: str) -> None:
        where = f"Report: {report.absolute()}; output kept at {rejected.absolute()}"
        super().__init__(f"gate '{stage}' failed: nothing published. {where}\n{summary}")
        self.stage = stage
        self.report = report
        self.rejected = rejected


@dataclass
class GateResult:
    """Outcome of a stage's suite: overall success and one entry per expectation."""

    stage: str
    success: bool
    checks: list[dict[str, Any]] = field(default_factory=list)
    raw: list[dict[str, Any]] = field(default_factory=list)
    docs: Path | None = None

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if not c["success"]]

    def summary(self) -> str:
        """A few lines a person can read: verdict, then each failed expectation."""
        verdict = "PASSED" if self.success else "FAILED"
        lines = [f"gate {self.stage}: {verdict} ({len(self.checks)} expectations, {len(self.failures)} failed)"]
        for c in self.failures:
            lines.append(f"  FAILED {c['batch']}: {c['expectation']} {c['kwargs']} -> {c['observed']}")
        return "\n".join(lines)

    def for_manifest(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "expectations": len(self.checks),
            "failed": [f"{c['batch']}: {c['expectation']} {c['kwargs']}" for c in self.failures],
        }


# A gate: (stage, its suite's batches, where to write the report or None for none) -> the result.
Validator = Callable[[str, Sequence[Any], Path | None], GateResult]
