"""``python -m ggl.sweep``."""
import sys

from ggl.sweep.main import main

sys.exit(main())
