import sys

from pmlsim.cli import main

sys.exit(main())
