"""The command line: one module per subcommand, no logic beyond parsing arguments and printing results."""
