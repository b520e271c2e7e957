import sys

from hpcrun.cli.main import main

sys.exit(main())
