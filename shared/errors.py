"""Every error spar raises on purpose, in one place, with what the CLI and the API make of it.

Each message names what to change (the field, setting, file or command), so the CLI prints it as
one line without a traceback (exit code ``exit_code``) and the API answers with ``http_status`` and
``{"detail": message}``. The classes also derive from the built-in exception a caller would expect
(``ValueError`` for bad input, ``FileNotFoundError`` for a missing file, ``ImportError`` for a
missing package), so code that catches those keeps working.

Modules raise these from here; several are also importable from where they used to be defined.
"""

from __future__ import annotations

import errno
from typing import ClassVar


class SparError(Exception):
    """Base class: an error whose message tells the user what to change."""

    exit_code: ClassVar[int] = 2
    http_status: ClassVar[int] = 500


# --- input the user gave -----------------------------------------------------------------------


class ConfigError(SparError, ValueError):
    """A run config that cannot be used; the message names the field and the fix."""

    http_status = 400


class DataFileError(SparError, ValueError):
    """A data file with malformed entries, all listed at once (the first 20 in the message), so a
    user fixes the file in one pass; ``problems`` holds (entry number, reason) pairs."""

    http_status = 400
    unit = "entry"  # what an entry is called in the message

    def __init__(self, source: str, problems: list[tuple[int, str]]):
        self.source = source
        self.problems = problems
        shown = "; ".join(f"{self.unit} {n}: {why}" for n, why in problems[:20])
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        super().__init__(f"{source}: {len(problems)} malformed {self.unit}(s): {shown}{more}")


class PromptFileError(DataFileError):
    """A prompts file with malformed lines; ``problems`` holds (line number, reason) pairs."""

    unit = "line"


class JudgeDataError(DataFileError):
    """A pairwise data file with malformed items; ``problems`` holds (item number, reason) pairs."""

    unit = "item"


class RunNotFoundError(SparError, LookupError):
    """A run id the service does not know, or whose directory is gone from the data root."""

    http_status = 404


class RunConflictError(SparError, RuntimeError):
    """A request that conflicts with what the run is doing (e.g. a second resume at the same time)."""

    http_status = 409


class ModelNotFoundError(SparError, FileNotFoundError):
    """A model that is neither a built-in name nor a model folder."""

    http_status = 400


class WorkerSettingsError(SparError, ValueError):
    """A worker setting from the environment is invalid (the message names the variable)."""


# --- the state of a run -------------------------------------------------------------------------


class ConfigChangedError(SparError, RuntimeError):
    """A finished shard was produced with other settings than the run's current ones."""

    http_status = 409


class InputChangedError(SparError, RuntimeError):
    """A data file the run reads (SFT data, held-out pairs, validation prompts) is gone or no longer
    has the content the run was created with (``shared.runtime.data_inputs``)."""

    http_status = 409


class RebuildMismatchError(SparError, RuntimeError):
    """A model version rebuilt after ``spar unpack`` has other weights than the packed run recorded:
    the run's later stages were computed with the original, so the rebuilt one is not published."""

    http_status = 409


class MissingStageOutputError(SparError, RuntimeError):
    """A stage needs the output of an earlier stage that has not run."""

    http_status = 409


class InjectedFault(SparError, RuntimeError):
    """A failure requested through ``SPAR_FAIL_SHARDS`` (fault-tolerance drills and tests)."""


# --- what is installed and what can start ---------------------------------------------------------


class NotInstalledError(SparError, ImportError):
    """A package spar needs for this command is missing; the message gives the install command."""


class VLLMNotInstalledError(NotInstalledError):
    """vLLM is missing; the message says where it is available and how to install it."""


class SmolLM2NotInstalledError(NotInstalledError):
    """The GGUF file of SmolLM2 is not available; the message says how to install it."""


class EvalPackageMissingError(NotInstalledError):
    """The IFEval checker's packages are not installed."""


class EngineStartError(SparError, RuntimeError):
    """An engine could not start (memory setting, unsupported model, bad path).

    The message is one line that names the setting to change, so a CLI can print it as is, without
    a traceback, and a worker's failed job says what to fix.
    """

    http_status = 503


class ModelFolderError(EngineStartError, FileNotFoundError):
    """The model path is not a Hugging Face model folder (a ``FileNotFoundError`` too)."""

    http_status = 400


class EngineHostError(SparError, RuntimeError):
    """The engine host process failed to start, died, or reported an error for a call."""

    http_status = 503


class GPUCountError(ConfigError):
    """A job needs more GPUs (``tensor_parallel_size``, ``num_processes``, ``hf.device``) than the
    worker sees; refused before anything loads, with the setting named."""


class TrainingLaunchError(SparError, RuntimeError):
    """The launched training exited non-zero; the message carries its last output lines."""


class HubPushError(SparError, RuntimeError):
    """A push of a published version to a hub failed and ``hub.required`` is set. The version stays
    published; the message names the repo and the fix, and a retry or ``--resume`` pushes again."""

    http_status = 502


class StorageError(SparError, RuntimeError):
    """The data root cannot be written (disk full, read-only, no permission): nothing was left behind.

    507 (Insufficient Storage) for a full disk or quota, 503 for a read-only or unwritable one.
    """

    http_status = 503

    def __init__(self, where: object, cause: OSError):
        self.cause = cause
        full = cause.errno in (errno.ENOSPC, errno.EDQUOT)
        why = "the disk is full" if full else f"it cannot be written ({cause.strerror or cause})"
        super().__init__(f"could not create the run under {where}: {why}; free space or fix the data root")
        self.http_status = 507 if full else 503  # type: ignore[misc]
