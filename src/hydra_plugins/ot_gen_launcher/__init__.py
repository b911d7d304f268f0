"""ot_gen's Hydra launcher (`hydra/launcher=processes`); Hydra finds plugins in this namespace."""
