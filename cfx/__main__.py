import sys

from cfx.cli import main

sys.exit(main())
