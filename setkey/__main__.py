import sys

from setkey.cli import main

sys.exit(main())
