"""Training: configuration, the trainer with its callbacks, checkpoints, and ONNX export."""
