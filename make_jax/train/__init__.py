"""Training: optimizer and schedule, the sharded train step, the loop, checkpoints."""
