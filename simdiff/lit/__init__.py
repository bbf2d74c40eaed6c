"""LightningModules, their helpers (EMA) and the loops that run trained networks over stores."""
