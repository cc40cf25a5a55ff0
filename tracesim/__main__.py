import sys

from tracesim.cli.main import main

sys.exit(main())
