"""Ground costs c(x, y) between points, used both to match and as the regression loss.

Every cost offers two views of the same function: `pairwise(x, y)` gives the (m, n)
matrix the matchers solve on, `paired(x, y)` the (p,) costs of already-paired rows that
the generator regresses on. Points are flattened to vectors first, so images work too.
"""

from __future__ import annotations

import math

import torch

from ot_gen.errors import check


class Cost:
    """Base class: subclasses implement `_paired` on flat (p, d) rows and `_pairwise`."""

    name = "cost"
    matches_only = False  # True: fit to pair points, not to regress on (train.build refuses it as `cost`)

    def check_data(self, key: str, shape: tuple[int, ...], data_name: str) -> None:
        """Refuse, before any work, data of a shape (one point's) this cost cannot take."""

    def work_per_pair(self, shape: tuple[int, ...]) -> float:
        """Multiply-adds of one entry of the pairwise matrix, for points of `shape`."""
        return float(math.prod(shape))

    def pairwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._pairwise(x.flatten(1), y.flatten(1))

    def paired(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._paired(x.flatten(1), y.flatten(1))

    def _pairwise(self, x, y):  # pragma: no cover - abstract
        raise NotImplementedError

    def _paired(self, x, y):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SqEuclidean(Cost):
    """c(x, y) = ||x - y||², the default (W2 geometry)."""

    name = "sqeuclidean"

    def _pairwise(self, x, y):
        # ||x||² + ||y||² - 2 x·y is fast but cancels badly; clamp the round-off below 0.
        d = (x * x).sum(1, keepdim=True) + (y * y).sum(1) - 2.0 * x @ y.T
        return d.clamp_min_(0.0)

    def _paired(self, x, y):
        return ((x - y) ** 2).sum(1)


class Euclidean(Cost):
    """c(x, y) = ||x - y|| (the Earth-moving net's "L2 unsquared")."""

    name = "euclidean"

    def _pairwise(self, x, y):
        return torch.cdist(x, y)

    def _paired(self, x, y):
        return (x - y).norm(dim=1)


class L1(Cost):
    """c(x, y) = ||x - y||_1."""

    name = "l1"

    def _pairwise(self, x, y):
        return torch.cdist(x, y, p=1.0)

    def _paired(self, x, y):
        return (x - y).abs().sum(1)


class _ImageCost(Cost):
    """A cost defined on images (N, C, H, W) with pixel range `data_range` (hi − lo of the
    data's value_range). Built with `data_range: ${oc.select:data.value_range,null}`, so
    a non-image data set is a config error naming cost.data_range."""

    def __init__(self, data_range: list[float] | tuple[float, float] | None):
        check(data_range is not None and len(data_range) == 2, "data_range", data_range,
              f"the data's value range: cost {self.name} works on image data only")
        self.data_range = float(data_range[1]) - float(data_range[0])

    def check_data(self, key, shape, data_name):
        check(len(shape) == 3, key, self.name,
              f"a cost of points of any shape (sqeuclidean, euclidean, l1): data={data_name} gives points "
              f"of shape {tuple(shape)}, and cost {self.name} compares images (C, H, W)")

    def pairwise(self, x, y):
        return self._pairwise(self._image(x), self._image(y))

    def paired(self, x, y):
        return self._paired(self._image(x), self._image(y))

    def _image(self, x):
        if x.dim() != 4:
            raise ValueError(f"cost {self.name} needs images (N, C, H, W), got shape {tuple(x.shape)}")
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}(data_range={self.data_range})"


class SSIM(_ImageCost):
    """c(x, y) = 1 − SSIM(x, y): the structural similarity of Wang et al. (2004), Gaussian
    window 11×11, σ = 1.5, K1 = 0.01, K2 = 0.03, mean over the valid positions and
    channels. The pairwise matrix needs every pair's local covariances, so it costs about
    121× a squared-Euclidean matrix: the OT-GAN paper matched with `psnr` for that reason."""

    name = "ssim"
    window, sigma = 11, 1.5

    def _kernel(self, x):
        r = torch.arange(self.window, dtype=x.dtype, device=x.device) - (self.window - 1) / 2
        g = torch.exp(-(r**2) / (2 * self.sigma**2))
        g = g / g.sum()
        return torch.outer(g, g)

    def _windows(self, shape) -> int:
        return (shape[-2] - self.window + 1) * (shape[-1] - self.window + 1) * shape[0]

    def check_data(self, key, shape, data_name):
        super().check_data(key, shape, data_name)
        check(min(shape[-2:]) >= self.window, key, self.name,
              f"a cost of images of at least {self.window}×{self.window} pixels (the SSIM window): "
              f"data={data_name} gives {shape[-2]}×{shape[-1]}; use sqeuclidean or l1")

    def work_per_pair(self, shape):
        return float(self._windows(shape) * self.window**2)

    def _patches(self, x):
        """(N, P, 121): every valid 11×11 window of every channel, flattened."""
        c = x.shape[1]
        if min(x.shape[-2:]) < self.window:
            raise ValueError(f"cost ssim needs images of at least {self.window}×{self.window}, got {tuple(x.shape)}")
        p = torch.nn.functional.unfold(x, self.window)  # (N, C·121, L)
        return p.view(len(x), c, self.window**2, -1).permute(0, 1, 3, 2).reshape(len(x), -1, self.window**2)

    def _ssim(self, mx, my, vx, vy, cov):
        c1, c2 = (0.01 * self.data_range) ** 2, (0.03 * self.data_range) ** 2
        num = (2 * mx * my + c1) * (2 * cov + c2)
        den = (mx**2 + my**2 + c1) * (vx + vy + c2)
        return (num / den).mean(-1)

    def _moments(self, p, w):
        mean = p @ w
        return mean, (p * p) @ w - mean**2

    def _paired(self, x, y):
        w = self._kernel(x).flatten()
        px, py = self._patches(x), self._patches(y)
        (mx, vx), (my, vy) = self._moments(px, w), self._moments(py, w)
        cov = (px * py) @ w - mx * my
        return 1 - self._ssim(mx, my, vx, vy, cov)

    def _pairwise(self, x, y, rows: int = 64):
        w = self._kernel(x).flatten()
        px, py = self._patches(x), self._patches(y)
        (mx, vx), (my, vy) = self._moments(px, w), self._moments(py, w)
        pyw = py * w  # (n, P, 121)
        out = []
        for i in range(0, len(x), rows):  # (rows, n, P) at a time
            exy = torch.einsum("apk,bpk->abp", px[i : i + rows], pyw)
            cov = exy - mx[i : i + rows, None] * my[None]
            out.append(self._ssim(mx[i : i + rows, None], my[None], vx[i : i + rows, None], vy[None], cov))
        return 1 - torch.cat(out)


class PSNR(_ImageCost):
    """c(x, y) = −PSNR(x, y) = 10·log10(MSE / data_range²) in dB: matching only (the
    OT-GAN paper matched with PSNR and regressed with SSIM). As `cost` it is refused; use
    it as `cost@match_cost=psnr` next to a regression cost."""

    name = "psnr"
    matches_only = True

    def _mse(self, d):
        return d.clamp_min(1e-20) / (self.data_range**2)

    def _pairwise(self, x, y):
        n = x[0].numel()
        d = SqEuclidean().pairwise(x, y) / n
        return 10 * torch.log10(self._mse(d))

    def _paired(self, x, y):
        return 10 * torch.log10(self._mse(((x - y) ** 2).flatten(1).mean(1)))


class LaplacianL1(_ImageCost):
    """c(x, y) = Σ_j 4^j ‖L_j(x) − L_j(y)‖₁ over the `levels` bands of the Laplacian
    pyramid (L_j = G_j − up(G_{j+1}), G_{j+1} = the 2×2 average of G_j; the last band is
    the coarsest G itself): the L1 loss of GLO (Bojanowski et al. 2018), which weighs
    coarse structure as much as fine detail (band j has 4^j times fewer pixels) and makes
    a decoder sharper than L2 does. Its pairwise matrix is an L1 matrix of the stacked,
    weighted bands, so it matches as fast as `l1` on a few more numbers."""

    name = "laplacian"

    def __init__(self, data_range: list[float] | tuple[float, float] | None, levels: int = 3):
        super().__init__(data_range)
        check(isinstance(levels, int) and not isinstance(levels, bool) and levels >= 1, "levels", levels,
              "an integer >= 1 (pyramid bands)")
        self.levels = levels

    def check_data(self, key, shape, data_name):
        super().check_data(key, shape, data_name)
        side = 2 ** (self.levels - 1)
        check(shape[-1] % side == 0 and shape[-2] % side == 0, f"{key}.levels", self.levels,
              f"at most as many bands as the image halves evenly: data={data_name} gives "
              f"{shape[-2]}×{shape[-1]}, which {self.levels} bands need divisible by {side}")

    def bands(self, x: torch.Tensor) -> torch.Tensor:
        """The weighted pyramid of images (N, C, H, W), flattened: (N, about 4/3·C·H·W)."""
        x = self._image(x)
        out, g = [], x
        for j in range(self.levels - 1):
            coarse = torch.nn.functional.avg_pool2d(g, 2)
            out.append((g - torch.nn.functional.interpolate(coarse, scale_factor=2, mode="nearest")).flatten(1) * 4**j)
            g = coarse
        out.append(g.flatten(1) * 4 ** (self.levels - 1))
        return torch.cat(out, 1)

    def work_per_pair(self, shape):
        return float(math.prod(shape)) * 4 / 3

    def pairwise(self, x, y):
        return torch.cdist(self.bands(x), self.bands(y), p=1.0)

    def paired(self, x, y):
        return (self.bands(x) - self.bands(y)).abs().sum(1)

    def __repr__(self) -> str:
        return f"LaplacianL1(data_range={self.data_range}, levels={self.levels})"
