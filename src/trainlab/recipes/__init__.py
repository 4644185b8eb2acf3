"""Recipes: components put together for one command (torchtune's word). No training loop here:
every recipe plugs an objective into `trainlab.train.Trainer`."""
