"""Layer 4, experiments: the run ledger, Algorithm 1 with the SS/WS baselines and ablations
(the main job), and the Ray Tune search. Imports the layers below."""
