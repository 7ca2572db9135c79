"""Errors raised on purpose. A bad dalle is never an error: it is a `DalleProblem` record."""


class IndexerError(Exception):
    """Base for errors raised on purpose; the message is one line meant for the user."""


class ConfigError(IndexerError):
    """A setting, an option or an input document is invalid."""


class InvalidSource(IndexerError):
    """The SOURCE given is not a storage the indexer knows how to read."""


class StorageUnreachable(IndexerError):
    """The storage cannot be listed (network, permissions, missing folder). Transient."""


class LivrableNotFound(IndexerError):
    """The projet document has no livrable matching the request."""


class ForbiddenAddress(StorageUnreachable):
    """The storage resolves to a loopback, private, link-local or multicast address not allowed.

    Not transient: only the ``allowed_networks`` setting or the storage's address can change it.
    """


class ListingLimitReached(StorageUnreachable):
    """The crawl went past the depth or entry cap: the listing is stopped rather than left to run."""


class ReadError(Exception):
    """A file could not be read after retries; the message names the cause. Per file: never fatal."""
