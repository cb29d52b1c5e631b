"""Training: configuration, the trainer with its callbacks, checkpoints, and ONNX export.

The entry point is :func:`run` with a :class:`TrainRequest` (what ``facecli train`` does, option for option) or a
ready :class:`~facecli.train.config.TrainConfig`; :func:`resolve` gives the configuration a request asks for.
"""

from facecli.train.request import TrainRequest, head_catalogue, resolve, run

__all__ = ["TrainRequest", "head_catalogue", "resolve", "run"]
