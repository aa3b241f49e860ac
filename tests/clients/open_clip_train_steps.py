"""Run by tests/test_clients.py with webdataset 0.2.86 first on the path (the version
open_clip's training extra pins): open_clip's own training data pipeline reads the pruned
shards without a sample count, and a tiny model takes a few training steps on them.

    python open_clip_train_steps.py SHARDS_PATTERN STEPS

Prints one json line: the webdataset version, the dataset size open_clip found (and the
epoch's sample count it rounds it to), the keys the pipeline read, and the losses.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import open_clip
import torch
import webdataset
from open_clip.loss import ClipLoss
from open_clip_train import data as train_data

from pipeline.embed.models import TINY_MODEL, register_model_configs


def main() -> None:
    pattern, steps = sys.argv[1], int(sys.argv[2])
    register_model_configs()
    torch.manual_seed(0)
    model, preprocess, _ = open_clip.create_model_and_transforms(TINY_MODEL)
    tokenizer = open_clip.get_tokenizer(TINY_MODEL)
    seen: list[str] = []
    real_filter = train_data.filter_no_caption_or_no_image

    def recording(sample: dict) -> bool:  # sees every sample the pipeline reads
        seen.append(sample["__key__"])
        return real_filter(sample)

    train_data.filter_no_caption_or_no_image = recording
    args = SimpleNamespace(train_data=pattern, val_data=None, train_num_samples=None,
                           dataset_resampled=False, train_data_upsampling_factors=None,
                           seed=0, batch_size=4, workers=0, world_size=1)
    info = train_data.get_wds_dataset(args, preprocess, is_train=True, epoch=0,
                                      tokenizer=tokenizer)
    loss_fn = ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for step, (images, texts) in enumerate(info.dataloader):
        if step == steps:
            break
        image_features, text_features, logit_scale = model(images, texts)[:3]
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    print(json.dumps({"webdataset": webdataset.__version__,
                      "dataset_size": train_data.get_dataset_size(pattern)[0],
                      "num_samples": info.dataloader.num_samples, "seen": seen,
                      "losses": losses}))


if __name__ == "__main__":
    main()
