"""Every error labelloop raises on purpose, in one tree: what a caller can catch, and what the CLI prints.

A `LabelloopError` is a message for a person: it names what was wrong and where (file, line, field,
HTTP status) and, where there is one, what to do. The CLI's `main` catches the root once and prints
the message without a traceback; anything else is a bug and keeps its traceback.

A `PermanentError` is one that waiting cannot fix (a wrong setting, a model that cannot be loaded):
the scheduler stops the run with it at once instead of retrying; everything else is retried with
backoff. The tree (the second base, where there is one, keeps older `except ValueError` callers
working)::

    LabelloopError
    ├── PermanentError                    retrying cannot fix it: the run stops with the cause and the fix
    │   ├── ConfigError (ValueError)      a settings file or variable is wrong
    │   ├── TemplateError (ValueError)    a teacher prompt template is malformed
    │   ├── TeacherError (RuntimeError)   the teacher cannot be set up (e.g. no API key)
    │   ├── LearnerError (RuntimeError)   the learner's model cannot be loaded (offline, a wrong path)
    │   └── VersionError (ValueError)     a learner version cannot be used (unknown, pruned, missing)
    ├── IngestError (ValueError)          a pool file cannot be read; nothing was stored
    ├── ExportError (ValueError)          an export cannot be written as asked
    ├── SimulateError (ValueError)        `simulate` was given options it cannot use
    ├── LedgerError
    │   ├── NotFound (LookupError)        a `get_*` lookup found no row
    │   └── StaleState (RuntimeError)     a state change lost a race (the row moved on meanwhile)
    ├── StudioError (RuntimeError)        a Label Studio call failed (HTTP status, never the key)
    │   └── ImportOutcomeUnknown          an import whose answer never came: await its tasks, never repeat it
    ├── LocalStudioError (RuntimeError)   the bundled Label Studio could not be started
    ├── EngineError (RuntimeError)        pool compute failed in some batches (the others are stored) or Ray
    │                                     cannot be reached
    ├── ServiceError (RuntimeError)       the backend or the project could not be set up
    └── AlreadyRunning (RuntimeError)     another scheduler holds this project's lock
"""

from __future__ import annotations


class LabelloopError(Exception):
    """The root: an error whose message is meant for the person running labelloop."""


class PermanentError(LabelloopError):
    """A failure that retrying cannot fix; the message says the cause and the fix."""


class ConfigError(PermanentError, ValueError):
    """Settings that cannot be used; the message names the file and field."""


class IngestError(LabelloopError, ValueError):
    """A pool file that cannot be ingested; the message names file, line and column."""


class TemplateError(PermanentError, ValueError):
    """A teacher prompt template that cannot be used; the message names the file."""


class TeacherError(PermanentError, RuntimeError):
    """The teacher cannot be set up as configured (a missing key, an unknown kind)."""


class ExportError(LabelloopError, ValueError):
    """An export that cannot be written as asked."""


class SimulateError(LabelloopError, ValueError):
    """Options `simulate` cannot run with; the message names the flag."""


class VersionError(PermanentError, ValueError):
    """A learner version that cannot be used; the message lists the known ones."""


class LearnerError(PermanentError, RuntimeError):
    """The learner's model cannot be loaded: not a local checkpoint, and not downloadable from here."""


class LedgerError(LabelloopError):
    """A ledger operation that cannot be done as asked."""


class NotFound(LedgerError, LookupError):
    """A `get_*` lookup found no row (the `find_*` twin returns None instead)."""

    def __init__(self, what: str, key: object):
        self.what = what
        self.key = key
        super().__init__(f"no {what} {key!r} in the ledger")


class StaleState(LedgerError, RuntimeError):
    """A compare-and-set state change found the row in another state: someone else moved it first."""


class StudioError(LabelloopError, RuntimeError):
    """A Label Studio call failed. Carries the HTTP status (None when the server was unreachable) and
    what was being done; never the API key."""

    def __init__(self, what: str, status: int | None = None, detail: str = ""):
        self.what = what
        self.status = status
        self.detail = detail
        where = f"HTTP {status}" if status is not None else "no response"
        super().__init__(f"Label Studio: {what} failed ({where}){': ' + detail if detail else ''}")


class ImportOutcomeUnknown(StudioError):
    """A bulk import whose answer never came (timeout, lost connection, 5xx): Label Studio may have
    committed it or may still commit it (it retries a request that met a SQLite lock for about 15
    minutes, longer than the client waits), so its keys must be awaited before anything is imported again."""


class LocalStudioError(LabelloopError, RuntimeError):
    """The bundled Label Studio could not be installed, started or reached."""


class EngineError(LabelloopError, RuntimeError):
    """Pool compute failed: some batches raised (the finished ones are stored; a re-run computes only the
    rest), or the Ray cluster cannot be reached."""


class ServiceError(LabelloopError, RuntimeError):
    """The ML backend or the Label Studio project could not be set up."""


class AlreadyRunning(LabelloopError, RuntimeError):
    """Another scheduler holds this project's lock."""


def is_permanent(exc: BaseException) -> bool:
    """Whether retrying cannot help: a PermanentError, or Label Studio refusing our credentials."""
    return isinstance(exc, PermanentError) or (isinstance(exc, StudioError) and exc.status in (401, 403))
