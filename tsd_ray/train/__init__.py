"""Layer 2, training: the phase spec, losses, augmentation, the one ``train_loop_per_worker``
(worker), the driver that builds the ``TorchTrainer``, encoder pretraining and its items.
Imports ``common``, ``data``, ``metrics`` and ``models``."""
