"""Layer 1, metrics: post-processing of frame probabilities (thresholds, median filter, events)
and scoring with sed_eval; pure functions of arrays and event lists, no models, no Ray Train.
Imports only ``tsd_ray.common``."""
