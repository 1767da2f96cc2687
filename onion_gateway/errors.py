"""The onion-gateway exception tree.

::

  OnionGatewayError
   +- ConfigError            bad setting, config file or command-line value
   +- CodecError             a lookup request that cannot be parsed
   |   +- FramingError       ... and the byte stream can no longer be split into requests
   +- PostfixError           postconf/postmap/postfix failed or disagreed
   +- TorError               the Tor control port failed or refused
   +- SetupError             setup refused to start, or failed and restored what it had changed
   +- AuditError             the relay audit could not do part of its work
       +- Unreachable        a listener could not be connected to or greeted
       |   +- GreetingRefused  ... it answered with a non-220 greeting
       +- TableUnreadable    postmap could not query a lookup table

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


class AuditError(OnionGatewayError):
    """The relay audit could not do part of its work (``onion-gateway audit-open-relay``)."""


class Unreachable(AuditError):
    """A listener could not be connected to or greeted; the message names the listener and the cause."""


class GreetingRefused(Unreachable):
    """The listener answered, but with a non-220 greeting (e.g. ``554 5.7.1`` for every client).

    :param reply: the greeting (an :class:`onion_gateway.audit.probe.Reply`).
    """

    def __init__(self, message: str, reply) -> None:
        super().__init__(message)
        self.reply = reply


class TableUnreadable(AuditError):
    """A Postfix lookup table could not be queried (``postmap -q`` reported a fatal or query error)."""
