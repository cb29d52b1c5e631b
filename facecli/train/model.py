"""Model assembly in one place: backbone (+ optional neck) → classifier (full or Partial FC) → head → loss.

``build_model`` is the only function that turns a config into modules, so an architecture option (e.g. GroupFace's
neck, registered in ``facecli.nn.backbones.NECKS``) or a new head family needs no change anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from facecli.errors import UsageError
from facecli.nn.classifier import Classifier, FullClassifier
from facecli.nn.heads import EmbeddingLoss, MarginHead, build_head
from facecli.nn.inference import QUALITY_FEATURE_NORM, backbone_state, build_backbone, model_info, read_weights
from facecli.nn.onnx_import import import_onnx, is_onnx
from facecli.nn.partial_fc import PartialFC
from facecli.train.config import TrainConfig


@dataclass
class StepOutput:
    loss: torch.Tensor  # the total loss to back-propagate (detached copies are used for logging)
    max_logit: torch.Tensor  # largest |logit| (or |embedding|) of the step, for the non-finite report


class FaceModel(nn.Module):
    """Everything with parameters that one training step runs, as one module (what DDP wraps)."""

    def __init__(self, backbone: nn.Module, head: MarginHead | EmbeddingLoss,
                 classifier: Classifier | None, aux: EmbeddingLoss | None = None,
                 aux_weight: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.head = head
        self.aux = aux
        self.aux_weight = float(aux_weight)

    def forward(self, images: torch.Tensor, labels: torch.Tensor, freeze_backbone: bool = False,
                teacher: torch.Tensor | None = None, distill_weight: float = 0.0) -> StepOutput:
        """The step's loss; ``teacher`` (the initial backbone's embeddings of the clean images) adds
        ``distill_weight`` x mean(1 - cos(embedding, teacher))."""
        if freeze_backbone:
            with torch.no_grad():
                embeddings = self.backbone(images)
        else:
            embeddings = self.backbone(images)
        if self.classifier is None:  # an embedding loss (contrastive, triplet): no class centres
            loss = self.head(embeddings.float(), labels)
            extreme = embeddings.detach().float().abs().max()
        else:
            assert isinstance(self.head, MarginHead)  # build_model pairs every classifier with a margin head
            local_norms = embeddings.float().norm(dim=1)
            batch, batch_labels = self.classifier.gather(embeddings, labels)
            cosine, columns = self.classifier(batch, batch_labels)
            logits = self.head(cosine, columns, batch.float().norm(dim=1))
            loss = self.classifier.cross_entropy(logits, columns)
            regularizer = self.head.regularizer(local_norms)
            if regularizer is not None:
                loss = loss + regularizer
            extreme = logits.detach().abs().max()
        if self.aux is not None:
            loss = loss + self.aux_weight * self.aux(embeddings.float(), labels)
        if teacher is not None and not freeze_backbone:
            loss = loss + distill_weight * (1 - F.cosine_similarity(embeddings.float(), teacher.float())).mean()
        neck_loss = getattr(self.backbone, "auxiliary_loss", None)  # e.g. GroupFace's group-decision loss
        if callable(neck_loss) and not freeze_backbone:
            extra = neck_loss()
            if extra is not None:
                loss = loss + extra
        return StepOutput(loss=loss, max_logit=extreme)


def load_init_backbone(backbone: nn.Module, path: str, info: dict[str, Any]) -> None:
    """``--init``: copy a facecli checkpoint's or arcface_torch ``.pt``'s backbone weights (strict)."""
    state, found = backbone_state(read_weights(path))
    if (found["architecture"], found["embedding_size"]) != (info["architecture"], info["embedding_size"]):
        raise UsageError(
            f"--init {path} is a {found['architecture']} with {found['embedding_size']}-d embeddings, but the run "
            f"uses {info['architecture']} with {info['embedding_size']}-d (set model.backbone / model.embedding_size)"
        )
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UsageError(f"--init {path} does not fit the backbone: {str(exc).splitlines()[0]}") from None


def init_from_onnx(cfg: TrainConfig) -> tuple[nn.Module, dict[str, Any]]:
    """``--init MODEL.onnx``: the imported network (architecture and embedding size come from the file)."""
    m = cfg.model
    if m.neck:
        raise UsageError("model.neck cannot wrap a backbone imported from ONNX")
    bgr = {"": None, "RGB": False, "BGR": True}[m.init_color]
    return import_onnx(m.init, mean=m.init_mean or None, std=m.init_std or None, bgr=bgr)


def head_info(name: str, head: nn.Module) -> dict[str, str]:
    """What the exported model inherits from its training head: the name, and ``quality: feature-norm`` when the
    head makes the raw embedding norm a face-quality score (MagFace, AdaFace), so readers need not guess."""
    info = {"head": name}
    if getattr(head, "quality_from_norm", False):
        info["quality"] = QUALITY_FEATURE_NORM
    return info


def build_model(cfg: TrainConfig, num_classes: int) -> tuple[FaceModel, dict[str, Any]]:
    """The training model for ``cfg`` and the backbone's info (stored in checkpoints and exports)."""
    m = cfg.model
    if m.init and is_onnx(m.init):
        backbone, info = init_from_onnx(cfg)
        embedding_size = int(info["embedding_size"])
    else:
        embedding_size = m.embedding_size
        info = model_info(m.backbone, m.embedding_size, m.neck or None, m.neck_options, m.backbone_options)
        try:
            backbone = build_backbone(info, dropout=m.dropout)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"backbone {m.backbone}: {exc}") from None
        if m.init:
            load_init_backbone(backbone, m.init, info)
    head = _build_head(cfg.head.name, num_classes, embedding_size, cfg.head.options)
    info.update(head_info(cfg.head.name, head))
    classifier = _build_classifier(cfg, head, num_classes, embedding_size)
    aux: EmbeddingLoss | None = None
    if cfg.head.aux:
        built = _build_head(cfg.head.aux, num_classes, embedding_size, cfg.head.aux_options)
        if not isinstance(built, EmbeddingLoss):
            raise UsageError(f"head.aux={cfg.head.aux} is a margin head; an auxiliary loss works on embeddings")
        aux = built
    return FaceModel(backbone, head, classifier, aux, cfg.head.aux_weight), info


def _build_classifier(cfg: TrainConfig, head: MarginHead | EmbeddingLoss, num_classes: int,
                      embedding_size: int) -> Classifier | None:
    """Full or Partial FC centres for a margin head; none for an embedding loss, which works on embeddings alone."""
    if isinstance(head, MarginHead):
        subcenters = int(getattr(head, "num_subcenters", 1))
        if cfg.head.partial_fc <= 0:
            return FullClassifier(num_classes, embedding_size, subcenters, seed=cfg.seed)
        if head.partial_fc_incompatible:
            raise UsageError(f"--partial-fc cannot be used with head {cfg.head.name}: {head.partial_fc_incompatible}")
        return PartialFC(num_classes, embedding_size, cfg.head.partial_fc, subcenters, seed=cfg.seed)
    if head.kind == "auxiliary":
        raise UsageError(f"{cfg.head.name} is an auxiliary loss: add it to a margin head with "
                         f"head.aux={cfg.head.name} (and head.aux_weight)")
    if cfg.head.partial_fc > 0:
        raise UsageError(f"--partial-fc cannot be used with head {cfg.head.name}: {head.partial_fc_incompatible}")
    return None


def _build_head(name: str, num_classes: int, embedding_size: int,
                options: dict[str, Any]) -> MarginHead | EmbeddingLoss:
    try:
        head = build_head(name, num_classes, embedding_size, **options)
    except TypeError as exc:
        raise UsageError(f"head {name}: {exc} (its options: {', '.join(_option_names(name)) or 'none'})") from None
    except ValueError as exc:
        raise UsageError(f"head {name}: {exc}") from None
    if not isinstance(head, (MarginHead, EmbeddingLoss)):
        raise UsageError(f"{name} is not a margin head or an embedding loss")
    return head


def _option_names(name: str) -> list[str]:
    from facecli.nn.heads import HEADS, constructor_defaults

    return list(constructor_defaults(HEADS.get(name)))
