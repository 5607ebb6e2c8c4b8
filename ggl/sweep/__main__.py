"""``python -m ggl.sweep``."""
import sys

from ggl.sweep import main

sys.exit(main())
