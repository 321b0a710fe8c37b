"""Exception types. A `BortError` is a user mistake: the CLI prints one line and exits 2."""


class BortError(Exception):
    """A problem the user can fix (bad config, bad input file, missing upstream artifact)."""


class ConfigError(BortError):
    """A config key, value or file is wrong."""


class DataError(BortError):
    """A task or corpus file cannot be used as given."""


class AssetError(BortError):
    """A pinned asset cannot be fetched or does not match its hash."""


class ArtifactError(BortError):
    """An upstream stage's artifact is missing, stale or altered."""
