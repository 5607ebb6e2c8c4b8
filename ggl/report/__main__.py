"""``python -m ggl.report``."""
import sys

from ggl.report import main

sys.exit(main())
