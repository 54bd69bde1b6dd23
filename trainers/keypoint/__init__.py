"""PP-TinyPose fine-tuning: the network, its import from an exported model, the training loop."""
