import sys

from balwatch.cli import main

sys.exit(main())
