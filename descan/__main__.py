import sys

from descan.cli import main

sys.exit(main())
