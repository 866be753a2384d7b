import sys

from pfkeyd.cli import main

sys.exit(main())
