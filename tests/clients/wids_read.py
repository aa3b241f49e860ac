"""Run by tests/test_clients.py with webdataset 0.2.86 (which ships wids) on the path: wids'
ShardListDataset opens the index the run wrote and yields every sample by index.

    python wids_read.py INDEX_JSON

Prints one json line: the dataset length and each sample's key, caption and image width.
"""

from __future__ import annotations

import json
import sys
import tempfile

import wids


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        dataset = wids.ShardListDataset(sys.argv[1], cache_dir=cache)
        rows = []
        for i in range(len(dataset)):
            sample = dataset[i]
            image = sample.get(".jpg") or sample.get(".png")  # decoded by wids (PIL)
            rows.append({"key": sample["__key__"], "caption": sample[".txt"],
                         "image": 0 if image is None else image.size[0]})
    print(json.dumps({"length": len(dataset), "samples": rows}))


if __name__ == "__main__":
    main()
