"""Errors that name what is wrong: the file, the row or member, and the field.

`InputError` is for input that is unusable as a whole (a missing column, a corrupt archive): the task fails
with it. A problem confined to one record is not an exception: it goes to the task's reject log
(`records.RejectLog`) and the build goes on.
"""

from __future__ import annotations


class TolError(Exception):
    """Base class of the errors tol_builder raises on purpose (the CLI prints them without a traceback)."""


class ConfigError(TolError):
    """A workflow or manifest TOML that does not fit its schema."""

    def __init__(self, file: object, key: str, expected: str, got: object = None):
        self.file, self.key, self.expected, self.got = str(file), key, expected, got
        msg = f"{self.file}: key '{key}': expected {expected}"
        if got is not None:
            msg += f", got {got!r}"
        super().__init__(msg)


class ConfigErrors(ConfigError):
    """Several problems of one file at once (validate.problems): each key, what was expected, what was given."""

    def __init__(self, file: object, problems: list[tuple[str, str, object]]):
        self.problems = problems
        key, expected, got = problems[0]
        super().__init__(file, key, expected, got)
        if len(problems) > 1:
            lines = "\n".join(f"  key '{k}': expected {e}, got {g!r}" for k, e, g in problems)
            self.args = (f"{self.file}: {len(problems)} problems:\n{lines}",)


class InputError(TolError):
    """Source input that cannot be used at all. Names file, row or member, and field where known."""

    def __init__(self, file: object, reason: str, *, row: int | None = None, member: str | None = None,
                 field: str | None = None):
        self.file, self.reason, self.row, self.member, self.field = str(file), reason, row, member, field
        where = [self.file]
        if member is not None:
            where.append(f"member {member}")
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {reason}")


class ChecksumError(TolError):
    def __init__(self, file: object, algorithm: str, expected: str, got: str):
        super().__init__(f"{file}: {algorithm} mismatch: manifest says {expected}, file has {got}")
        self.file, self.algorithm, self.expected, self.got = str(file), algorithm, expected, got
