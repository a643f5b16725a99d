"""MAPE: Max-and-Attention Pillar Encoding, plus the scatter of pillar features onto the BEV canvas.

Pure torch (``scatter_reduce_`` / ``index_add_`` segment reductions), so it runs unchanged on CPU and
GPU and needs no torch_scatter or custom CUDA op; CPU inference uses a small compiled kernel when a C compiler
is there (``ops/mape_cpu.py``). Points arrive as a flat list with a pillar id each
("stacked" representation); pillars arrive as a flat list with their canvas cell.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import mape_cpu
from .repvgg import LEAKY_SLOPE


def segment_max(values: Tensor, segment: Tensor, num_segments: int, floor: float | None = None) -> Tensor:
    """Per-segment, per-channel max of ``values`` ``[L, C]`` grouped by ``segment`` ``[L]`` -> ``[M, C]``.

    With ``floor`` the result is ``max(floor, max_i values_i)`` (segments without members give ``floor``);
    without it, segments without members give ``-inf``.
    """
    init = float("-inf") if floor is None else floor
    out = values.new_full((num_segments, values.shape[1]), init)
    # scatter_reduce_ with an expanded (stride-0) index is stable API and faster on CPU than the
    # beta index_reduce_.
    index = segment.view(-1, 1).expand(-1, values.shape[1])
    return out.scatter_reduce_(0, index, values, "amax", include_self=True)


def segment_sum(values: Tensor, segment: Tensor, num_segments: int) -> Tensor:
    """Per-segment sum of ``values`` ``[L, C]`` -> ``[M, C]`` (zeros for segments without members)."""
    out = values.new_zeros((num_segments, values.shape[1]))
    return out.index_add_(0, segment, values)


class MAPE(nn.Module):
    """Max-and-attention pillar encoder (official ``PillarMaxPooling_dense``).

    Per point: ``f = LeakyReLU(BN1d(Linear(x)))`` (``shared_mlps``) and attention logits
    ``s = LeakyReLU(Linear(f))`` (``score_fn``). Per pillar and channel: an attention-weighted sum
    ``sum_i softmax_i(s_i) f_i`` and a max ``max(0, max_i f_i)`` (the zero floor reproduces the official
    zero-initialised atomic max); the pillar feature is their average.
    """

    def __init__(self, in_features: int = 8, num_filters: int = 64, bn_eps: float = 1e-3) -> None:
        super().__init__()
        self.in_features, self.num_filters = in_features, num_filters
        self.shared_mlps = nn.Sequential(
            nn.Linear(in_features, num_filters, bias=False),
            nn.BatchNorm1d(num_filters, eps=bn_eps, momentum=0.01),
            nn.LeakyReLU(LEAKY_SLOPE),
        )
        self.score_fn = nn.Sequential(nn.Linear(num_filters, num_filters, bias=True), nn.LeakyReLU(LEAKY_SLOPE))

    def point_features(self, features: Tensor) -> Tensor:
        """``[L, F] -> [L, C]``: Linear + BN1d + LeakyReLU. In eval mode BN is folded into the Linear
        (one GEMM with bias instead of GEMM + a full pass over ``[L, C]``)."""
        if self.training:
            return self.shared_mlps(features)
        return F.leaky_relu(F.linear(features, *self._folded_linear()), LEAKY_SLOPE)

    def _folded_linear(self) -> tuple[Tensor, Tensor]:
        """The eval-mode point Linear with BN folded in: weight ``[C, F]`` and bias ``[C]``."""
        linear, bn = self.shared_mlps[0], self.shared_mlps[1]
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return linear.weight * scale[:, None], bn.bias - bn.running_mean * scale

    def forward(self, features: Tensor, point_pillar: Tensor, num_pillars: int) -> Tensor:
        """Encode points into pillar features.

        Args:
            features: ``[L, F]`` float32 decorated points (raw columns, then the 3 offsets to the pillar centre).
            point_pillar: ``[L]`` int64 pillar id of each point, in ``[0, num_pillars)``.
            num_pillars: M.
        Returns:
            ``[M, C]`` pillar features (float32); pillars without points are 0.
        """
        if features.shape[1] != self.in_features:
            raise ValueError(f"MAPE expects {self.in_features} decorated features per point, got "
                             f"{features.shape[1]} (features = raw point columns + 3 pillar offsets)")
        idx = point_pillar.long()
        if not torch.is_grad_enabled():
            return self._forward_inference(features, idx, num_pillars)
        f = self.point_features(features)
        s = self.score_fn(f)
        # Numerically stable per-pillar softmax: subtract the per-pillar, per-channel maximum logit.
        s_max = segment_max(s, idx, num_pillars)
        e = torch.exp(s - s_max.index_select(0, idx))
        denom = segment_sum(e, idx, num_pillars)
        weighted = segment_sum(e * f, idx, num_pillars)
        # Each non-empty pillar has denom >= 1 (its arg-max point contributes exp(0)); the clamp only
        # keeps empty pillars at 0 instead of 0/0.
        attention = weighted / denom.clamp_min(1e-12)
        maximum = segment_max(f, idx, num_pillars, floor=0.0)
        return (attention + maximum) * 0.5

    def _forward_inference(self, features: Tensor, idx: Tensor, num_pillars: int) -> Tensor:
        """:meth:`forward` without autograd: on the CPU one compiled kernel, GEMMs and per-pillar reductions fused
        (``ops/mape_cpu.py``; BENCHMARKS.md, #17), on torch's intra-op thread count; elsewhere or without a C
        compiler :meth:`_forward_torch`."""
        if features.device.type == "cpu" and features.shape[0] < mape_cpu.MAX_POINTS and \
                (lib := mape_cpu.kernel()) is not None:
            score = self.score_fn[0]
            return mape_cpu.mape_encode(lib, features.float(), idx, num_pillars, self._folded_linear(),
                                        (score.weight, score.bias), LEAKY_SLOPE, torch.get_num_threads())
        return self._forward_torch(features, idx, num_pillars)

    def _point_tensors(self, features: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        """Eval-mode point features and attention logits, written into the planes ``out[0]``, ``out[1]`` of a
        ``[>=2, L, C]`` block (the GEMMs write straight into them, the LeakyReLUs run in place)."""
        f, s = out[0], out[1]
        weight, bias = self._folded_linear()
        F.leaky_relu_(torch.addmm(bias, features, weight.t(), out=f), LEAKY_SLOPE)
        score = self.score_fn[0]
        F.leaky_relu_(torch.addmm(score.bias, f, score.weight.t(), out=s), LEAKY_SLOPE)
        return f, s

    def _forward_torch(self, features: Tensor, idx: Tensor, num_pillars: int) -> Tensor:
        """:meth:`forward` without autograd in pure torch, on the CPU with the points sorted by pillar (CPU time 21
        vs 27 ms of the autograd path on a 118k-point scan, one thread; test/bench/bench_cpu_default.py). Same
        arithmetic per element as :meth:`forward`, and the sort is stable, so each per-pillar sum adds the same
        values in the same order (on the real scan tried the results are equal bit for bit).

        Why sorted: torch's CPU scatter reductions with an expanded index sort the index and then reduce segment by
        segment; with sorted points they read the source rows in memory order (a scatter-max over ``[L, C]``
        3.3 -> 1.7 ms, one thread), and the gather of the per-pillar maxima is sequential too. Every per-point
        tensor is a contiguous plane of one ``[3, L, C]`` block (features, logits, gathered maxima), so the
        element-wise passes run vectorised (on ``[L, C]`` half-views of an ``[L, 2C]`` buffer, ``exp_`` and the
        gather took several times longer), and one point-sized block per frame keeps glibc's heap from growing
        and fragmenting (test/test_malloc.py)."""
        if features.device.type == "cpu":  # on a GPU the scatters use atomics, which sorted points make collide
            # int32 keys: torch's stable CPU sort is a radix sort; 4-byte keys take half the passes of 8-byte ones.
            order = torch.argsort(idx.int(), stable=True)
            idx, features = idx.index_select(0, order), features.index_select(0, order)
        planes = features.new_empty((3, features.shape[0], self.num_filters))
        f, s = self._point_tensors(features, planes)
        s_max = segment_max(s, idx, num_pillars)
        maximum = segment_max(f, idx, num_pillars, floor=0.0)
        e = s.sub_(torch.index_select(s_max, 0, idx, out=planes[2])).exp_()
        denom = segment_sum(e, idx, num_pillars)
        weighted = segment_sum(f.mul_(e), idx, num_pillars)
        attention = weighted / denom.clamp_min(1e-12)
        return (attention + maximum) * 0.5


def scatter_to_canvas(pillar_features: Tensor, coords: Tensor, height: int, width: int, batch_size: int = 1,
                      batch_index: Tensor | None = None) -> Tensor:
    """Write pillar features onto a zero BEV canvas.

    Args:
        pillar_features: ``[M, C]`` float.
        coords: ``[M, 2]`` int ``[row, col]`` = ``[y index, x index]`` of each pillar.
        height, width: canvas size in cells (rows = y, columns = x).
        batch_size: B.
        batch_index: ``[M]`` int batch item of each pillar (all 0 when None).
    Returns:
        ``[B, C, H, W]`` canvas; cells without a pillar are 0. Cell (r, c) covers
        ``x in [x_min + c * dx, x_min + (c + 1) * dx)``, ``y in [y_min + r * dy, ...)``.
    """
    m, c = pillar_features.shape
    flat = coords[:, 0].long() * width + coords[:, 1].long()
    if batch_index is not None:
        flat = flat + batch_index.long() * (height * width)
    canvas = pillar_features.new_zeros((c, batch_size * height * width))
    if m:
        canvas.index_copy_(1, flat, pillar_features.t())
    # [C, B*H*W] -> [B, C, H, W]; for B == 1 this is a free view.
    canvas = canvas.view(c, batch_size, height, width).permute(1, 0, 2, 3)
    return canvas if batch_size == 1 else canvas.contiguous()
