"""``conceptprune evaluate``: does the pruned subset train better than a random one of its
size? Arms (the run's shards, a seeded random subset of the same size, the whole input, the
survivors of an earlier step) are trained for the same number of samples seen with
open_clip's own trainer and scored by zero-shot classification on a labelled set."""
