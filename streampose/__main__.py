import sys

from streampose.cli import main

sys.exit(main())
