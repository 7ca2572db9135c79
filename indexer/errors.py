"""Every error the indexer raises on purpose. A bad dalle is never an error: it is a `DalleProblem`.

Each door maps these classes to its outcomes in one table: the command line to exit codes
(`indexer.cli.EXIT_CODES`), the Celery tasks to retry or fail (`tasks.jobs.PERMANENT`).
"""


class IndexerError(Exception):
    """Base for errors raised on purpose; the message is one line meant for the user."""


class ConfigError(IndexerError):
    """A setting, an option or an input document is invalid."""


class InvalidSource(IndexerError):
    """The SOURCE given is not a storage the indexer knows how to read."""


class StorageUnreachable(IndexerError):
    """The storage cannot be listed or read (network, permissions, missing folder).

    Args:
        message: one line for the user.
        permanent: trying again cannot mend it (a missing root, a refused login, a TLS error):
            the fleet ends the scan as failed at once instead of retrying it.
    """

    permanent_by_default = False

    def __init__(self, message: str, *, permanent: bool | None = None) -> None:
        super().__init__(message)
        self.permanent = self.permanent_by_default if permanent is None else permanent


class ForbiddenAddress(StorageUnreachable):
    """The storage resolves to a loopback, private, link-local or multicast address not allowed.

    Permanent: only the ``allowed_networks`` setting or the storage's address can change it.
    """

    permanent_by_default = True


class ListingLimitReached(StorageUnreachable):
    """The crawl went past the depth or entry cap: the listing is stopped rather than left to run."""

    permanent_by_default = True


class ScanUnreliable(StorageUnreachable):
    """The storage failed while the scan read it (too many unreadable dalles, or none valid where the
    last scan had some): the scan ends as failed and the last good result stays published."""

    permanent_by_default = True


class BrokerUnreachable(IndexerError):
    """The message starting a scan could not be sent to the broker: the scan was not queued."""


class LivrableNotFound(IndexerError):
    """The projet document has no livrable matching the request."""


class StorageNotFound(IndexerError):
    """No storage in the store matches the id or URL given."""


class ScanRunning(IndexerError):
    """A scan of the storage is already queued or running."""


class MapAssetsMissing(IndexerError):
    """The map library (Leaflet, installed by ``npm ci``) is not beside the package: no map page can be made."""


class NotFound(FileNotFoundError):
    """The server says a file or folder does not exist.

    Args:
        how: how the server put it (``HTTP 404``, ``FTP 550 No such file``), '' when it said nothing more.
        where: the path or masked URL asked for.
    """

    def __init__(self, how: str = "", where: str = "") -> None:
        super().__init__(how)
        self.how = how
        self.where = where


class ReadError(Exception):
    """A file or a listing page could not be read after retries. Per file: never fatal.

    Args:
        what: the file's path (or the page's masked URL) the read was for.
        detail: the cause, for the user (``timed out (2 attempts)``, ``not found (HTTP 404)``).
        permanent: the cause is not transient (a refused login, a TLS error), so trying the
            storage again later will not mend it.
    """

    def __init__(self, what: str, detail: str, *, permanent: bool = False) -> None:
        super().__init__(f"{what}: {detail}")
        self.what = what
        self.detail = detail
        self.permanent = permanent
