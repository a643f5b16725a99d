"""The FastPillars detector: MAPE + CRVNet + RPNV2 + CenterPoint head, and :func:`build_model`.

Split for deployment: :meth:`FastPillars.encode` (dynamic, points -> canvas) and
:meth:`FastPillars.forward_dense` (static shapes, canvas -> head maps; the ONNX/TensorRT part),
then :meth:`FastPillars.decode` (maps -> candidate boxes, before NMS).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..config import ModelConfig, load_model_config
from .crvnet import CRVNet
from .head import Candidates, CenterHead, decode_head_outputs
from .neck import RPNV2

#: Fusion levels, least to most fused. "repvgg": RepVGG blocks re-parameterised (official deploy form);
#: "full": additionally every Conv+BN of the neck and head folded into the conv.
FUSION_LEVELS = ("train", "repvgg", "full")


class FastPillars(nn.Module):
    """FastPillars network. Attribute names reproduce the official state_dict keys
    (``backbone.*``, ``neck.*``, ``bbox_head.*``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        b, n, h = config.backbone, config.neck, config.head
        self.backbone = CRVNet(config.num_decorated_features, config.encoder.num_filters, b.widths, b.num_blocks,
                               b.strides, config.encoder.bn_eps, b.bn_eps)
        self.neck = RPNV2(b.widths[2], b.widths[3], n.layer_nums, n.ds_num_filters, n.us_num_filters,
                          up_stride=b.strides[3], eps=n.bn_eps)
        self.bbox_head = CenterHead(self.neck.out_channels, tuple(len(t) for t in config.tasks), config.heads,
                                    h.shared_conv, h.head_conv, h.final_kernel, h.bn_eps)
        self._fusion = "train"

    # ---- stages ---------------------------------------------------------------------------
    def encode(self, features: Tensor, point_pillar: Tensor, coords: Tensor, batch_size: int = 1,
               batch_index: Tensor | None = None) -> Tensor:
        """Points -> BEV canvas.

        Args:
            features: ``[L, F]`` float32 decorated points (``config.point_features`` then 3 pillar offsets).
            point_pillar: ``[L]`` int64 pillar id of each point in ``[0, M)``.
            coords: ``[M, 2]`` int64/int32 ``[row = y index, col = x index]`` of each pillar.
            batch_size: B.
            batch_index: ``[M]`` batch item of each pillar (training batches); all 0 when None.
        Returns:
            ``[B, C, H, W]`` float32 canvas (``config.canvas_shape``).
        """
        from .mape import scatter_to_canvas

        _, height, width = self.config.canvas_shape
        pillars = self.backbone.pillar_pooling1(features, point_pillar, int(coords.shape[0]))
        return scatter_to_canvas(pillars, coords, height, width, batch_size, batch_index)

    def encode_points(self, points: np.ndarray) -> Tensor:
        """One scan -> BEV canvas ``[1, C, H, W]`` float32, the way the detector prepares it: terrain following
        (when the config turns it on), pillarize, decorate, :meth:`encode`.

        Args:
            points: ``(N, C)`` float32 in ``config.point_features`` order (x, y, z [m] in the model frame).
        """
        from ..ops import decorate, pillarize
        from ..terrain import follow_terrain

        cfg = self.config
        pts, _ = follow_terrain(torch.from_numpy(np.ascontiguousarray(points, np.float32)), cfg)
        pts = pts.numpy()
        pillars = pillarize(pts, cfg.pc_range, cfg.pillar_size)
        feats = torch.from_numpy(decorate(pts, pillars, cfg.pc_range, cfg.pillar_size))
        return self.encode(feats, torch.from_numpy(pillars.point_pillar), torch.from_numpy(pillars.coords))

    def forward_dense(self, canvas: Tensor) -> list[dict[str, Tensor]]:
        """Canvas ``[B, C, H, W]`` -> per task a dict of raw head maps ``[B, C_k, H/s, W/s]`` (no sigmoid)."""
        x4, x5 = self.backbone(canvas)
        return self.bbox_head(self.neck(x4, x5))

    def forward(self, canvas: Tensor) -> list[dict[str, Tensor]]:
        return self.forward_dense(canvas)

    def decode(self, head_outputs: list[dict[str, Tensor]], score_threshold: float | None = None
               ) -> list[Candidates]:
        """Head maps -> one :class:`Candidates` per batch item (sorted per task, top ``pre_max``)."""
        return decode_head_outputs(head_outputs, self.config, score_threshold)

    # ---- fusion ---------------------------------------------------------------------------
    @property
    def fusion_level(self) -> str:
        """"train" (multi-branch, checkpoint form), "repvgg" or "full" (see :data:`FUSION_LEVELS`)."""
        return self._fusion

    @property
    def fused(self) -> bool:
        return self._fusion != "train"

    @torch.no_grad()
    def fuse(self, level: str = "full") -> FastPillars:
        """Fuse in place for inference (BN uses running statistics, so call on a trained model).

        ``"repvgg"`` converts every RepVGG block into one 3x3 conv with bias (official deploy keys
        ``rbr_reparam.weight/bias``); ``"full"`` also folds the BNs of the neck and head into their
        convs. MAPE is left as is (its BN1d costs nothing next to the dense part). Returns self.
        """
        if level not in FUSION_LEVELS:
            raise ValueError(f"fusion level must be one of {FUSION_LEVELS}, got {level!r}")
        if FUSION_LEVELS.index(level) < FUSION_LEVELS.index(self._fusion):
            raise ValueError(f"cannot un-fuse a model from {self._fusion!r} to {level!r}; rebuild it")
        if level in ("repvgg", "full"):
            for block in self.backbone.repvgg_blocks():
                block.fuse()
        if level == "full":
            self.neck.fuse()
            self.bbox_head.fuse()
        self._fusion = level
        return self


def build_model(config: str | Path | ModelConfig) -> FastPillars:
    """Build a FastPillars model (training form, random weights, eval mode off) from a config name,
    a YAML path or a :class:`ModelConfig`."""
    return FastPillars(load_model_config(config))
