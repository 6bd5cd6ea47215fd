import sys

from diffscape.cli import main

sys.exit(main())
