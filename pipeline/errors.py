"""The exceptions of the pipeline, each carrying the exit code it ends a run with.

    PipelineError            expected and already explained; no traceback
    ├── UsageError       2   bad command line, path that is not a project
    │   └── ConfigError  2   invalid settings file or PIPELINE_* variable
    ├── NoEngineError   69   no container engine answers (EX_UNAVAILABLE)
    ├── StepFailed       1   a step ran and failed
    │   ├── PublishFailed 1  a push failed; names the tags that exist
    │   └── DeployFailed  1  a rollout failed; says whether it was rolled back
    └── Interrupted    130   Ctrl-C or SIGINT

Anything else that escapes is a bug and is shown with its traceback.
"""

from __future__ import annotations


class PipelineError(Exception):
    """A failure the user can act on; the CLI prints it as one message."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(PipelineError):
    exit_code = 2


class ConfigError(UsageError):
    """Invalid configuration: the message names the source, key and value."""


class NoEngineError(PipelineError):
    exit_code = 69


class StepFailed(PipelineError):
    exit_code = 1


class PublishFailed(StepFailed):
    """A push failed. ``existing_tags`` are the tags the registry has now."""

    def __init__(
        self, message: str, *, hint: str | None = None, existing_tags: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, hint=hint)
        self.existing_tags = existing_tags


class DeployFailed(StepFailed):
    """A rollout failed. ``rolled_back`` is true when the previous image
    serves again."""

    def __init__(
        self, message: str, *, hint: str | None = None, rolled_back: bool = False
    ) -> None:
        super().__init__(message, hint=hint)
        self.rolled_back = rolled_back


class Interrupted(PipelineError):
    exit_code = 130


EXIT_OK = 0
EXIT_STEP_FAILED = StepFailed.exit_code
EXIT_USAGE = UsageError.exit_code
EXIT_NO_ENGINE = NoEngineError.exit_code
EXIT_INTERRUPTED = Interrupted.exit_code
