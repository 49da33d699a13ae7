"""Caption datasets → WebDataset shards (see shards/FORMAT.md)."""
