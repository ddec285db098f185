"""tol_builder: rebuild, extend and train on TreeOfLife-scale image-text datasets.

Stages (one module each): ingest (source readers -> `records`), fetch (-> `media`), taxonomy, dedup,
shards, train. The runner (`runner.py`) executes a stage's tasks on Dask; stages never import cluster code.
"""

__version__ = "0.1.0"
