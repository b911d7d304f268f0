"""Write samples of a trained generator: `python -m ot_gen.sample ckpt_path=PATH n=N out=FILE.npy`.

The Hydra entry point (conf/sample.yaml); the work is in `ot_gen.run.sample`.
"""

import sys

import hydra
from omegaconf import DictConfig

from ot_gen.run.sample import sample


@hydra.main(version_base="1.3", config_path="../../conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    code = sample(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
