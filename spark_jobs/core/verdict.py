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
    docs: Path | None = None  # the Data Docs index
    page: Path | None = None  # the self-contained report page (spark_jobs.quality.report)

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if not c["success"]]

    def summary(self) -> str:
        """A few lines a person can read: verdict, then each failed expectation."""
        verdict = "PASSED" if self.success else "FAILED"
        lines = [f"gate {self.stage}: {verdict} ({len(self.checks)} expectations, {len(self.failures)} failed)"]
        for c in self.failures:
            observed = c["observed"] if isinstance(c["observed"], dict) else {}
            if "unexpected_rows" in observed:  # the rows that broke it, by name (a short class)
                seen = f"unexpected {observed['unexpected_rows']}"
            elif "value" in observed:  # a summary table's value itself (a ratio, a count)
                seen = f"observed {observed['value']}"
            else:
                seen = str(c["observed"])
            lines.append(f"  FAILED {c['batch']}: {c['expectation']} {c['kwargs']} -> {seen}")
        return "\n".join(lines)

    def for_manifest(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "expectations": len(self.checks),
            "failed": [f"{c['batch']}: {c['expectation']} {c['kwargs']}" for c in self.failures],
        }


@dataclass
class Exhibits:
    """What a stage shows on its gate's report page besides the checks: its counts, galleries
    (:class:`spark_jobs.quality.report.Gallery`) and links (label -> path; absolute paths are made
    relative to the page); the run's manifest is linked where it will be: ``published`` when the
    gate passes, ``rejected`` when it fails."""

    counts: dict[str, Any] = field(default_factory=dict)
    galleries: list[Any] = field(default_factory=list)
    links: dict[str, Path] = field(default_factory=dict)
    published: Path | None = None
    rejected: Path | None = None

    def for_verdict(self, success: bool) -> dict[str, Path]:
        """The links, with the manifest where this verdict puts it."""
        manifest = self.published if success else self.rejected
        where = "the run's manifest" if success else "the run's manifest, beside its rejected output"
        return {**self.links, **({where: manifest} if manifest is not None else {})}


# A gate: (stage, its suite's batches, where to write the report or None for none, what the stage
# shows on its report page besides the checks: counts and pictures, or None) -> the result.
Validator = Callable[[str, Sequence[Any], Path | None, Exhibits | None], GateResult]
