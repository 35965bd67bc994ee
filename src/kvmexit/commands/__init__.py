"""One module per subcommand, each with ``DESCRIPTION``, ``EPILOG``, ``prepare_parser`` and ``run``."""
