import sys

from sgid_utils.cli import main

sys.exit(main())
