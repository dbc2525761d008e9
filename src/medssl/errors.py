"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class MedsslError(Exception):
    """An error caused by input the user controls (config, data, paths), not by a bug."""


class ConfigError(MedsslError):
    """A bad params.yaml value or -S override."""


class DataContractError(MedsslError):
    """A dataset folder that does not follow docs/data-contract.md."""
