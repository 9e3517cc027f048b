"""One exception hierarchy for the package; the CLI turns it into a one-line message, exit 2."""


class VespaQuantError(Exception):
    """Base of every error the package raises on purpose."""


class DataError(VespaQuantError):
    """A dataset file is missing or malformed (message names file, line and problem)."""


class EmbeddingError(VespaQuantError):
    """A model cannot be loaded or embeddings do not match what was asked."""


class CalibrationError(VespaQuantError):
    """A calibration does not fit the vectors or method it is used with."""


class VespaError(VespaQuantError):
    """A Vespa endpoint is unreachable or answered with an error."""


class DockerError(VespaError):
    """The Docker engine is unreachable, refused a request, or holds containers that are not ours."""


class EndpointUnreachableError(VespaError):
    """Nothing listens at a Vespa endpoint (connection refused): fail at once, naming it."""


class InterruptedRunError(VespaQuantError):
    """SIGINT/SIGTERM stopped a run before it finished; the message summarises how far it got.

    The CLI prints it as one line and exits 130 (128 + SIGINT), like a shell would.
    """
