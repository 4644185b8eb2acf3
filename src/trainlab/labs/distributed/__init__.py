"""Lab: distributed training on 2 CPU processes (see `run`)."""
