"""Evaluation of face-recognition models: 10-fold verification, TAR@FAR, IJB-B/C 1:1 and 1:N, reports.

``run(EvalRequest(...))`` is ``facecli eval`` as a function (same numbers, files and errors); ``verify`` runs
insightface's verification protocol on embeddings; ``load_model`` opens an ONNX model, a facecli checkpoint or run
directory with its preprocessing; ``embed`` turns aligned faces into (flip-fused) embeddings.
"""

from facecli.eval.embed import embed
from facecli.eval.models import EmbeddingModel, load_model
from facecli.eval.request import EvalRequest
from facecli.eval.verification import VerificationResult, verify
from facecli.eval.workflow import EvalResult, run

__all__ = [
    "EmbeddingModel",
    "EvalRequest",
    "EvalResult",
    "VerificationResult",
    "embed",
    "load_model",
    "run",
    "verify",
]
