"""Layer 5, applications: detection on a user's recordings with an exported model, plots of
training curves, and the command-line helpers the ``jobs/`` scripts share. Imports any layer
below; nothing imports it."""
