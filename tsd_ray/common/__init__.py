"""Layer 0, shared by every other layer: typed config, storage (local or s3://), value types,
the Ray environment helpers and the record of the software environment. Imports nothing else
of tsd_ray (docs/architecture.md, "Layers")."""
