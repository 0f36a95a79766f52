"""mfd-loss."""
