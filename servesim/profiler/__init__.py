"""The profiler: times servesim's own kernels on a GPU over shape grids, SM partitions and
co-runs, and writes profile tables with provenance (schema: servesim.models.profile_schema).

Importing this package imports nothing heavy; its modules import torch and triton (the `gpu`
extra), which is why `servesim profile` loads `servesim.profiler.run` on demand.
"""
