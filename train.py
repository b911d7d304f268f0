"""Train a generator by optimal-transport matching: `python train.py prior=gmm matcher=exact`.

Configs live in conf/ (one folder per config group); see README.md.
"""

import hydra
from omegaconf import DictConfig

from ot_gen.run.train import task


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    return task(cfg)


if __name__ == "__main__":
    main()
