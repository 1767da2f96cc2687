"""The onion-gateway exception tree.

::

  OnionGatewayError
   +- ConfigError            bad setting, config file or command-line value
   +- CodecError             a lookup request that cannot be parsed
   |   +- FramingError       ... and the byte stream can no longer be split into requests
   +- PostfixError           postconf/postmap/postfix failed or disagreed
   +- TorError               the Tor control port failed or refused
   +- SetupError             setup refused to start, or failed and restored what it had changed
   +- HealthSourceError      a health source (queue listing, mail log, journal) could not be read

Each layer translates foreign errors (OSError, dnspython, stem) into one of these at its boundary,
so that the CLI can turn any of them into a message and an exit code.
"""


class OnionGatewayError(Exception):
    """Root of every error onion-gateway raises on purpose."""


class ConfigError(OnionGatewayError):
    """A setting is invalid. The message names the setting as a dotted path (``serve.dns_timeout_seconds``)."""


class CodecError(OnionGatewayError):
    """A lookup request is malformed but the stream stays in step (an error reply, then go on)."""


class FramingError(CodecError):
    """The request stream lost its framing: send the error reply, then close the connection."""


class PostfixError(OnionGatewayError):
    """A Postfix command failed; the message carries the command and its stderr."""


class TorError(OnionGatewayError):
    """Tor's control port could not be reached, authenticated to, or refused a command."""


class SetupError(OnionGatewayError):
    """``onion-gateway setup`` refused (changing nothing) or failed (restoring what it changed).

    The message says which step failed and what to do about it.
    """


class HealthSourceError(OnionGatewayError):
    """A source of the delivery-health views could not be read: ``postqueue -j`` refused or failed, the
    mail log is missing or unreadable, or ``journalctl`` is missing or refused.

    The message names the source and what gives access (root, the ``adm``/``systemd-journal`` groups,
    ``authorized_mailq_users``).
    """
