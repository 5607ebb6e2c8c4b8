"""python train.py --config fed_q4.yaml [key=value ...]   (see README.md and configs/)"""
import sys

from ggl.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
