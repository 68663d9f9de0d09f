"""Layer 1, data: corpora (one reader per format), the synthetic corpus, audio decoding, TSD
samples, log-mel features, the feature build and the on-disk shard format (manifest, reading
into Ray Data). Imports only ``tsd_ray.common``."""
