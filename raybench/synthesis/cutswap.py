"""CutSwap (saliency-guided patch swapping): anchors from the most salient k-means cluster of a
LayerCAM map, two equal patches with the anchors as upper-left vertices, swapped.

Everything is batched tensors on the images' device; randomness comes from one torch.Generator,
so a seed fixes every negative sample.

Choices the paper leaves open (see docs/methods.md):
- k-means is 1-D on saliency intensity, so each cluster is an interval of intensities between
  the midpoints of sorted centroids. Clustering runs once per image and layer (`build_anchor_cache`);
  a training step only draws pixels whose saliency lies in the chosen interval.
- k-means starts from k evenly spaced centroids between the map's min and max and runs a fixed
  number of Lloyd steps: deterministic, no seed needed (the seed drives the anchor draws).
- Borders: a patch whose anchor lies within a patch size of the right/bottom edge is moved
  inward just enough to fit (its vertex leaves the anchor by less than the patch size).
- Overlap: the second anchor is drawn only among positions whose patch does not overlap the
  first, so the swap is a true exchange (a pixel permutation). If no pixel of the cluster allows
  that (a tiny, compact salient region), it is drawn among non-overlapping positions outside the
  cluster; `swap_patches` returns a flag per sample so callers can count it.
- Patch size: the paper gives none; areas and aspect ratios are drawn as CutPaste's are, with the
  area capped at 1/9 of the image so that two equal patches always fit side by side.
- Scars: long-thin patches (CutPaste's 2-16 x 10-25 px at 256 px, scaled), each patch's content
  moved to the other's place and rotated there by the same random angle; the footprint reserved
  for a scar is a square of the scar's diagonal, so rotated scars never overlap or leave the image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from raybench.synthesis.patches import (gather_pixels, rand, sample_int, scaled_range,
                                        transplant_coordinates, uniform)
from raybench.synthesis.saliency import upsample_saliency

ANCHOR_STRATEGIES = ("kmeans", "sorting")
CLUSTER_SELECTIONS = ("max", "min", "random")  # paper Tab. VI: max (CutSwap), min and random ablations
MAX_PATCH_AREA = 1.0 / 9.0  # two equal patches must fit next to each other (see module docstring)


# ---- clustering ----
def kmeans_1d(values: torch.Tensor, k: int, iters: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched 1-D k-means. values (M, P) -> (sorted centroids (M, k), cluster sizes (M, k)).

    Deterministic: centroids start evenly spaced in [min, max]; an empty cluster keeps its centroid.
    Cluster j holds the values in [b_{j-1}, b_j) where b are midpoints of consecutive centroids.
    In 1-D a cluster is a run of the sorted values, so after one sort every Lloyd step is k binary
    searches and prefix-sum lookups (no pass over the pixels): ~30x faster than masked sums on the CPU.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    ordered = values.float().sort(dim=1).values
    n = ordered.shape[1]
    prefix = torch.cat([torch.zeros_like(ordered[:, :1], dtype=torch.float64),
                        ordered.double().cumsum(dim=1)], dim=1)  # float64: exact enough for 1e6 pixels
    low, high = ordered[:, :1], ordered[:, -1:]
    steps = (torch.arange(k, device=values.device, dtype=torch.float32) + 0.5) / k
    centroids = low + (high - low) * steps[None]
    for _ in range(iters):
        counts, sums = _cluster_runs(ordered, prefix, centroids, n)
        means = (sums / counts.clamp_min(1)).float()
        centroids = torch.where(counts > 0, means, centroids).sort(dim=1).values
    return centroids, _cluster_runs(ordered, prefix, centroids, n)[0]


def cluster_bounds(centroids: torch.Tensor) -> torch.Tensor:
    """Sorted centroids (M, k) -> the k-1 interval bounds (midpoints) (M, k-1), contiguous."""
    return ((centroids[:, 1:] + centroids[:, :-1]) / 2).contiguous()


def _cluster_runs(ordered, prefix, centroids, n):
    """Sizes and sums of the clusters [b_{j-1}, b_j) over sorted values (searchsorted 'left' counts
    the values strictly below a bound)."""
    inner = torch.searchsorted(ordered, cluster_bounds(centroids), right=False)
    edges = torch.cat([torch.zeros_like(inner[:, :1]), inner, torch.full_like(inner[:, :1], n)], dim=1)
    counts = edges[:, 1:] - edges[:, :-1]
    sums = prefix.gather(1, edges[:, 1:]) - prefix.gather(1, edges[:, :-1])
    return counts, sums


def kmeans_intervals(values: torch.Tensor, k: int, iters: int = 30):
    """values (M, P) -> per cluster, ascending by centroid: low (M, k), high (M, k), size (M, k);
    cluster j = {v : low_j <= v < high_j}."""
    centroids, counts = kmeans_1d(values, k, iters)
    bounds = cluster_bounds(centroids)
    inf = torch.full_like(centroids[:, :1], math.inf)
    return torch.cat([-inf, bounds], 1), torch.cat([bounds, inf], 1), counts


def top_pixels_interval(values: torch.Tensor, n_top: int):
    """The 'sorting' ablation: the n_top most salient pixels (ties included) as one interval."""
    n_top = max(2, min(int(n_top), values.shape[1]))
    threshold = values.topk(n_top, dim=1).values[:, -1:]
    counts = (values >= threshold).sum(dim=1, keepdim=True)
    return threshold, torch.full_like(threshold, math.inf), counts


@dataclass
class SaliencyAnchors:
    """Per training image and saliency layer: the maps (at each layer's own size, float16) and the
    candidate intervals of saliency from which anchors are drawn: low/high/size (N, L, C)."""

    maps: list[torch.Tensor]
    low: torch.Tensor
    high: torch.Tensor
    size: torch.Tensor
    image_size: int
    strategy: str

    @property
    def n_layers(self) -> int:
        return len(self.maps)

    def upsampled(self, index: torch.Tensor) -> torch.Tensor:
        """(B,) image indices -> their maps at image size (B, L, S, S)."""
        return upsample_saliency([m[index] for m in self.maps], self.image_size)

    def flat_fraction(self) -> float:
        """Share of maps with no saliency at all (every pixel in the top cluster: no guidance)."""
        pixels = self.image_size ** 2
        return float((self.size[..., -1] >= pixels).float().mean())


@torch.no_grad()
def build_anchor_cache(maps: list[torch.Tensor], image_size: int, strategy: str = "kmeans", k: int = 4,
                       top_pixels: int = 300, iters: int = 30, chunk: int = 32) -> SaliencyAnchors:
    """Cluster every map once (the saliency of an image never changes during training).

    `top_pixels` (sorting strategy) is stated at 256 px and scaled by area to `image_size`.
    """
    if strategy not in ANCHOR_STRATEGIES:
        raise ValueError(f"anchor strategy {strategy!r}: choose one of {ANCHOR_STRATEGIES}")
    n, n_layers = maps[0].shape[0], len(maps)
    lows, highs, sizes = [], [], []
    for start in range(0, n, chunk):
        index = torch.arange(start, min(start + chunk, n), device=maps[0].device)
        values = upsample_saliency([m[index] for m in maps], image_size).flatten(2).flatten(0, 1)
        if strategy == "kmeans":
            low, high, size = kmeans_intervals(values, k, iters)
        else:
            low, high, size = top_pixels_interval(values, round(top_pixels * (image_size / 256) ** 2))
        shape = (len(index), n_layers, -1)
        lows.append(low.view(shape))
        highs.append(high.view(shape))
        sizes.append(size.view(shape))
    return SaliencyAnchors(maps, torch.cat(lows), torch.cat(highs), torch.cat(sizes), image_size, strategy)


def select_intervals(anchors: SaliencyAnchors, image_index: torch.Tensor, layer_index: torch.Tensor,
                     cluster_select: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The saliency interval each sample draws anchors from: (low (B,), high (B,))."""
    if cluster_select not in CLUSTER_SELECTIONS:
        raise ValueError(f"cluster_select {cluster_select!r}: choose one of {CLUSTER_SELECTIONS}")
    low = anchors.low[image_index, layer_index]
    high = anchors.high[image_index, layer_index]
    if cluster_select == "max":
        return low[:, -1], high[:, -1]
    if anchors.strategy != "kmeans":
        raise ValueError(f"cluster_select={cluster_select!r} needs anchor_strategy='kmeans' (sorting has one set)")
    non_empty = anchors.size[image_index, layer_index] > 0
    if cluster_select == "min":
        # the lowest-centroid cluster that holds pixels (k-means keeps an empty cluster's centroid,
        # so the lowest interval may be empty): argmax returns the first True
        choice = non_empty.int().argmax(dim=1, keepdim=True)
    else:
        choice = torch.multinomial(non_empty.float(), 1, generator=gen)  # any non-empty cluster, uniformly
    return low.gather(1, choice)[:, 0], high.gather(1, choice)[:, 0]


# ---- anchors and the swap ----
def draw_anchor_pair(saliency: torch.Tensor, low: torch.Tensor, high: torch.Tensor, footprint: torch.Tensor,
                     gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two patch corners per sample, both from the pixels with low <= saliency < high.

    saliency (B, S, S); footprint (B, 2) the patch's (h, w). Returns corner1 (B, 2), corner2 (B, 2),
    moved into the image so the patches fit, never overlapping, and a flag (B,) that is True where
    no in-cluster position could host a non-overlapping second patch.
    """
    b, size = saliency.shape[0], saliency.shape[-1]
    device = saliency.device
    in_cluster = ((saliency >= low[:, None, None]) & (saliency < high[:, None, None])).flatten(1)
    # argmax of (uniform + 2 * member) is a uniform draw among members
    first = torch.argmax(rand((b, size * size), gen, device) + 2.0 * in_cluster, dim=1)
    limit = size - footprint  # largest corner that keeps the patch inside
    corner1 = torch.minimum(torch.stack([first // size, first % size], 1), limit)
    grid = torch.arange(size, device=device)
    cand_y = torch.minimum(grid[None, :], limit[:, :1])  # (B, S): corner row of a patch anchored there
    cand_x = torch.minimum(grid[None, :], limit[:, 1:])
    apart_y = (cand_y - corner1[:, :1]).abs() >= footprint[:, :1]
    apart_x = (cand_x - corner1[:, 1:]).abs() >= footprint[:, 1:]
    allowed = (apart_y[:, :, None] | apart_x[:, None, :]).flatten(1)
    score = rand((b, size * size), gen, device) + 2.0 * in_cluster
    second = torch.argmax(score.masked_fill(~allowed, -math.inf), dim=1)
    outside = ~in_cluster.gather(1, second[:, None])[:, 0]
    corner2 = torch.minimum(torch.stack([second // size, second % size], 1), limit)
    return corner1, corner2, outside


def swap_regions(images: torch.Tensor, center1: torch.Tensor, center2: torch.Tensor, hw: torch.Tensor,
                 angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exchange two regions of equal size: region 1 receives region 2's content and vice versa
    (rotated by `angle` on arrival). Both read the original image. Returns (images, mask (B,S,S))."""
    size = images.shape[-1]
    inside1, source1 = transplant_coordinates(size, center1, center2, hw, angle)
    inside2, source2 = transplant_coordinates(size, center2, center1, hw, angle)
    out = torch.where(inside1[:, None], gather_pixels(images, source1), images)
    out = torch.where(inside2[:, None], gather_pixels(images, source2), out)
    return out, inside1 | inside2


@dataclass
class SwapSettings:
    area: tuple[float, float] = (0.02, MAX_PATCH_AREA)  # of the image, per patch
    aspect_max: float = 3.3  # h/w drawn log-uniformly in [1/aspect_max, aspect_max]
    scar_width: tuple[float, float] = (2, 16)  # px at 256 px
    scar_length: tuple[float, float] = (10, 25)
    scar_angle_deg: float = 45.0  # scars rotate by an angle in [-a, a]

    def validate(self) -> None:
        if not 0 < self.area[0] <= self.area[1] <= MAX_PATCH_AREA:
            raise ValueError(f"patch area range {self.area}: need 0 < low <= high <= 1/9 "
                             f"(two equal patches must fit side by side)")
        if self.aspect_max < 1:
            raise ValueError("aspect_max must be >= 1")
        if math.hypot(self.scar_width[1], self.scar_length[1]) > 256 / 3:
            raise ValueError("scar too large: its diagonal must stay under a third of the image")


def patch_sizes(n: int, size: int, settings: SwapSettings, gen: torch.Generator, device) -> torch.Tensor:
    """(n, 2) integer (h, w): area and log-aspect uniform; floor keeps min(h, w) <= size/3."""
    area = uniform(settings.area[0], settings.area[1], (n,), gen, device) * size * size
    log_r = math.log(settings.aspect_max)
    aspect = torch.exp(uniform(-log_r, log_r, (n,), gen, device))
    h = torch.sqrt(area * aspect).floor().clamp(1, size - 1)
    w = torch.sqrt(area / aspect).floor().clamp(1, size - 1)
    return torch.stack([h, w], 1).long()


def scar_sizes(n: int, size: int, settings: SwapSettings, gen: torch.Generator, device) -> torch.Tensor:
    """(n, 2) integer (h = length, w = width) at `size` px."""
    w = sample_int(*scaled_range(settings.scar_width, size), n, gen, device)
    h = sample_int(*scaled_range(settings.scar_length, size), n, gen, device)
    return torch.stack([h, w], 1)


def cutswap(images: torch.Tensor, saliency: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
            settings: SwapSettings, gen: torch.Generator, scar: bool = False):
    """One negative per (image, map): images (B, 3, S, S), saliency (B, S, S) at image size,
    [low, high) the saliency interval to anchor in. Returns (negatives, mask (B, S, S), outside (B,))."""
    b, size, device = images.shape[0], images.shape[-1], images.device
    if scar:
        hw = scar_sizes(b, size, settings, gen, device)
        side = torch.ceil(torch.sqrt((hw.float() ** 2).sum(1))).long()
        footprint = torch.stack([side, side], 1)
        angle = uniform(-1.0, 1.0, (b,), gen, device) * math.radians(settings.scar_angle_deg)
    else:
        hw = patch_sizes(b, size, settings, gen, device)
        footprint = hw
        angle = torch.zeros(b, device=device)
    corner1, corner2, outside = draw_anchor_pair(saliency, low, high, footprint, gen)
    half = footprint.float() / 2  # regions sit centred in their footprints
    negatives, mask = swap_regions(images, corner1.float() + half, corner2.float() + half, hw, angle)
    return negatives, mask, outside
