from tracesim.cli.main import entry

entry()
