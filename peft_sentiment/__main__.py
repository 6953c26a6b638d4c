"""`python -m peft_sentiment`: see peft_sentiment/cli.py."""

import sys

from peft_sentiment.cli import main

sys.exit(main())
