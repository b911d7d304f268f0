"""Write N samples of a trained generator to a .npy file (and optionally a PNG):

    python -m ot_gen.sample ckpt_path=PATH n=100000 out=samples.npy [png=grid.png]
                            [batch=10000] [device=auto|cpu|cuda] [seed=0]

The array has shape (N, *data_shape) in the data's value range (images are clamped to
it). Samples are generated `batch` at a time straight into a memory-mapped .npy file, so
100,000 CIFAR-size samples never sit in memory at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import OmegaConf

from ot_gen import checkpoints
from ot_gen.errors import ConfigError, OTGenError, check, check_choice, check_positive_int

USAGE = "usage: python -m ot_gen.sample ckpt_path=PATH n=100000 out=samples.npy [png=grid.png] [batch=10000]"
DEFAULTS = {"ckpt_path": None, "n": 100_000, "out": "samples.npy", "png": None, "batch": 10_000,
            "device": "auto", "seed": 0}


def load_generator(ckpt_path: str | Path, device: str = "cpu"):
    """(prior, generator, data info) rebuilt from a training checkpoint, in eval mode."""
    ckpt = checkpoints.load(ckpt_path)
    if "ot_gen_config" not in ckpt or "ot_gen_data" not in ckpt:
        raise checkpoints.CheckpointError(f"checkpoint {ckpt_path} was not written by ot_gen training")
    cfg, data = OmegaConf.create(ckpt["ot_gen_config"]), ckpt["ot_gen_data"]
    prior = hydra.utils.instantiate(cfg.prior)
    generator = hydra.utils.instantiate(cfg.network, out_shape=tuple(data["shape"]))
    state = ckpt["state_dict"]
    for name, module in (("prior", prior), ("generator", generator)):
        module.load_state_dict({k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")})
    return prior.to(device).eval(), generator.to(device).eval(), data


@torch.no_grad()
def write_samples(ckpt_path, n: int, out, batch: int = 10_000, device: str = "cpu", seed: int = 0,
                  png=None) -> np.ndarray:
    prior, generator, data = load_generator(ckpt_path, device)
    torch.manual_seed(seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    array = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(n, *data["shape"]))
    for start in range(0, n, batch):
        x = generator(prior.sample(min(batch, n - start)))
        if data["value_range"] is not None:
            x = x.clamp(*data["value_range"])
        array[start : start + len(x)] = x.float().cpu().numpy()
    array.flush()
    if png is not None:
        _picture(torch.from_numpy(np.asarray(array[:1000])), data, Path(png))
    return array


def _picture(x: torch.Tensor, data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if x.dim() == 4:
        from torchvision.utils import save_image

        lo, hi = data["value_range"]
        save_image((x[:64] - lo) / (hi - lo), path, nrow=8, pad_value=1.0)
        return
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    if x.shape[1] == 1:
        ax.hist(x[:, 0].numpy(), bins=50)
    else:
        ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=3)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def main(argv: list[str]) -> int:
    try:
        unknown = [a for a in argv if "=" not in a or a.split("=", 1)[0] not in DEFAULTS]
        check(not unknown, "argument", " ".join(unknown), f"key=value with a key of {', '.join(DEFAULTS)}")
        args = OmegaConf.merge(DEFAULTS, OmegaConf.from_dotlist(argv))
        check(args.ckpt_path is not None, "ckpt_path", None, "a checkpoint file (checkpoints/last.ckpt of a run)")
        check_positive_int("n", args.n)
        check_positive_int("batch", args.batch)
        device = check_choice("device", args.device, ["auto", "cpu", "cuda"])
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        check(Path(args.ckpt_path).is_file(), "ckpt_path", args.ckpt_path, "an existing checkpoint file")
        array = write_samples(args.ckpt_path, args.n, args.out, args.batch, device, args.seed, args.png)
    except OTGenError as e:
        print(f"{type(e).__name__}: {e}\n{USAGE}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    print(f"wrote {args.out}: {array.shape} float32" + (f", and {args.png}" if args.png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
