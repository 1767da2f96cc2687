"""Allow ``python -m onion_gateway``."""

from onion_gateway.cli import main

main()
