"""Error types shared by the whole package.

Every error a user can cause is an `InstructJaxError`; the CLI prints it as one line and exits
non-zero. Data errors name the file, the row and the problem so a bad row can be found at once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


class InstructJaxError(Exception):
    """Base of every user-facing error: printed by the CLI as one line, exit code 2."""


class ConfigError(InstructJaxError):
    """A configuration that cannot run (unknown key, mesh/device mismatch, indivisible batch, ...)."""


class DataError(InstructJaxError):
    """A bad input row: names the source, file, row and the problem.

    `reason` is a short stable key (e.g. "malformed_json", "missing_field", "empty_response",
    "role_order", "ends_on_user", "invalid_utf8", "wrong_type") used to count skipped rows.
    """

    def __init__(
        self,
        problem: str,
        *,
        reason: str,
        file: str | None = None,
        row: int | str | None = None,
        source: str | None = None,
    ):
        self.problem = problem
        self.reason = reason
        self.file = file
        self.row = row
        self.source = source
        super().__init__(self._format())

    def __reduce__(self):  # pickled (a shared cache's piece, a worker's error) with its keyword-only fields
        return _data_error, (type(self), self.problem, self.reason, self.file, self.row, self.source)

    def _format(self) -> str:
        where = []
        if self.source:
            where.append(f"source {self.source}")
        if self.file:
            where.append(f"file {self.file}")
        if self.row is not None:
            where.append(f"row {self.row}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.problem}" if prefix else self.problem


def _data_error(cls: type, problem: str, reason: str, file, row, source) -> DataError:
    return cls(problem, reason=reason, file=file, row=row, source=source)


class NltkDataMissing(InstructJaxError):
    """nltk, or a data package of it a step needs, is not installed (no download is ever attempted): METEOR's
    (eval/long_form.py), the ifeval verifier's (data/verifiers/ifeval/text.py)."""


class SkippedRow(DataError):
    """A well-formed row that the dataset's own reference pipeline drops too (e.g. a ShareGPT conversation
    with a Bing speaker, a P3 answer choice marked incorrect): skipped and counted under any policy."""


@dataclass
class BadRowPolicy:
    """What happened to the rows of a source, and what to do with a bad one: raise
    (`on_bad_row="error"`, the default) or skip and count. A `SkippedRow` is always skipped and counted.

    Nothing is silent: `read` rows, `skipped` per reason (first example kept), `repaired` per repair
    (what an adapter changed, e.g. "dropped a leading gpt turn"); `summary()` gives one line per reason.
    """

    on_bad_row: str = "error"
    skipped: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)
    repaired: Counter = field(default_factory=Counter)
    read: int = 0

    def __post_init__(self):
        if self.on_bad_row not in ("error", "skip"):
            raise ConfigError(f"on_bad_row must be 'error' or 'skip', got {self.on_bad_row!r}")

    def handle(self, error: DataError) -> None:
        """Raise `error`, or record it when skipping (always for a `SkippedRow`)."""
        if self.on_bad_row == "error" and not isinstance(error, SkippedRow):
            raise error
        self.skipped[error.reason] += 1
        self.examples.setdefault(error.reason, str(error))

    def summary(self) -> list[str]:
        """One line per skip reason: count and the first example."""
        return [
            f"skipped {n} bad row(s): {reason} (first: {self.examples[reason]})"
            for reason, n in sorted(self.skipped.items())
        ]
