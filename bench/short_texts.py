"""A short-text dataset made from IMDB, to check the budget another dataset gets (config.OWN_DATA) on short texts.

    python bench/short_texts.py runs/short_texts     # train.csv and test.csv: each review's first sentence
    python -m peft_sentiment train --profile quick --set dataset=runs/short_texts --set text_column=sentence \
        --set label_column=sentiment

Each review becomes its first sentence (markup removed; at least 4 words), labelled as the review was: about 20 tokens
instead of about 300, and noisier (a first sentence often says little of the verdict). 2,000 train and 1,000 test rows,
balanced, drawn with seed 0 from IMDB's train and test splits; a run on it reads it as any user's folder.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import pandas as pd

SIZES = {"train": 2000, "test": 1000}


def first_sentence(text: str) -> str:
    """The review's first sentence, markup removed."""
    text = re.sub(r"<[^>]+>", " ", text)
    return re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)[0].strip()


def make(folder: Path, data_dir: Path) -> None:
    """Write train.csv and test.csv to `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, size in SIZES.items():
        frame = pd.read_parquet(data_dir / f"{split}.parquet")
        frame = frame.assign(sentence=frame["text"].map(first_sentence))
        frame = frame[frame["sentence"].str.split().str.len() >= 4]
        names = {0: "negative", 1: "positive"}
        rows = frame.groupby("label").sample(size // 2, random_state=0).sample(frac=1, random_state=0)
        rows.assign(sentiment=rows["label"].map(names))[["sentence", "sentiment"]].to_csv(folder / f"{split}.csv", index=False)
        print(f"{folder / f'{split}.csv'}: {len(rows)} rows")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parents[1]
    make(args.folder, Path(os.environ.get("IMDB_DATA_DIR") or root.parent / "shared" / "data" / "imdb"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
