"""python attack.py [--config attack.yaml] [source=runs/fed_q4/latest] [key=value ...]"""
import sys

from ggl.cli import attack_main

if __name__ == "__main__":
    sys.exit(attack_main())
