"""Training: optimizer, loss, metrics, train state and step, checkpoints."""
