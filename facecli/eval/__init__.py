"""Evaluation of face-recognition models: 10-fold verification, TAR@FAR, IJB-B/C 1:1 and 1:N, reports.

``verify`` runs insightface's verification protocol on embeddings; ``load_model`` opens an ONNX model, a facecli
checkpoint or run directory with its preprocessing; ``embed`` turns aligned faces into (flip-fused) embeddings.
"""

from facecli.eval.embed import embed
from facecli.eval.models import EmbeddingModel, load_model
from facecli.eval.verification import VerificationResult, verify

__all__ = ["EmbeddingModel", "VerificationResult", "embed", "load_model", "verify"]
