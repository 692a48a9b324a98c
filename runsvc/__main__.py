import sys

from runsvc.cli import main

sys.exit(main())
