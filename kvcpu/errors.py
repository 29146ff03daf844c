"""Every error kvcpu raises derives from KVCPUError, so callers can catch one type."""


class KVCPUError(Exception):
    """Base class of every kvcpu error."""


class StateFormatError(KVCPUError, ValueError):
    """llama.cpp sequence-state bytes that kvcpu cannot interpret exactly."""

    def __init__(self, reason: str, offset: int | None = None):
        self.reason = reason
        self.offset = offset
        where = f" at byte offset {offset}" if offset is not None else ""
        super().__init__(f"invalid llama.cpp sequence state{where}: {reason}")


class UnsupportedTypeError(KVCPUError, TypeError):
    """A tensor type whose values kvcpu does not expose (raw blocks only)."""


class SnapshotError(KVCPUError):
    """Base class of errors about snapshot files and bytes."""


class NotASnapshotError(SnapshotError):
    """The bytes do not start with a kvcpu magic: a foreign file."""


class SnapshotTruncatedError(SnapshotError):
    """The snapshot ends before its declared length."""


class SnapshotChecksumError(SnapshotError):
    """The snapshot's payload does not match its checksum: it is corrupt."""


class SnapshotVersionError(SnapshotError):
    """The snapshot was written by a newer (or unknown) format version."""


class SnapshotHeaderError(SnapshotError):
    """The snapshot header is malformed or inconsistent with its payload."""


class ModelMismatchError(SnapshotError):
    """The snapshot was made by another model than the one it is loaded into."""


class CodecError(KVCPUError):
    """A codec cannot encode or decode what it was given."""


class ModelError(KVCPUError):
    """Base class of errors about finding and fetching models."""


class UnknownModelError(ModelError, KeyError):
    """A model name that is neither in the registry nor a path to a .gguf file."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelNotSupportedError(ModelError):
    """A model whose memory kvcpu cannot keep as a KV snapshot (recurrent, hybrid, M-RoPE):
    refused when it is loaded, never misread at its first snapshot."""


class ModelDownloadError(ModelError):
    """Fetching a model failed; nothing was left in the cache."""


class ModelChecksumError(ModelError):
    """A fetched model file does not have the registry's sha256."""


class EngineError(KVCPUError):
    """llama.cpp refused an operation (load, eval, state get or set)."""


class BenchResultsError(KVCPUError):
    """A benchmark results file is not one kvcpu can read: foreign, damaged or from a newer kvcpu."""


class RecordError(KVCPUError):
    """A conversation record could not be written (a full disk, a read-only directory)."""


class APIError(KVCPUError):
    """A request kvcpu serve refuses, answered with an HTTP status and OpenAI's error body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ContextFullError(KVCPUError):
    """The prompt and the reply cannot fit the context, even after dropping the middle."""


class RemoteError(KVCPUError):
    """The remote tier's URL cannot be used (a malformed URL, no client library)."""


class StoreDiskError(KVCPUError):
    """The store directory cannot be used: not writable, or the disk is full."""


class UnknownConversationError(KVCPUError, KeyError):
    """No conversation by that name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
