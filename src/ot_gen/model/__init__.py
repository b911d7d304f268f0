"""The model: the LightningModule, the two training modes, priors, generator networks and
the generator's weight average (EMA)."""
