"""One module per `keel` subcommand."""
