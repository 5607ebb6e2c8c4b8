"""``python -m ggl.report``."""
import sys

from ggl.report.build import main

sys.exit(main())
