"""Benchmarks outside a build: BioCLIP's evaluation table for any model, on the benchmarks' own labels.

A package of its own (not part of train/) because it is a stage of its own: it reads a benchmark's metadata and
images straight from disk, never a build, a catalog or the taxonomy, and its task layer (tasks.py: manifests,
label semantics, class strings) needs no torch, so a benchmark manifest can be checked without the train extra.

* tasks.py     benchmark manifests ([benchmark] tables), their images and labels, the class strings per text type
* features.py  models to evaluate (checkpoint folder, architecture + weights file, random init), image and class
               text features in batches with the model's own validation transform, cached on disk
* suite.py     `tol eval suite`: zero-shot and few-shot of every model on every task, one table
* embed.py     `tol embed`: image embeddings of a task, an image folder or a shard split as parquet; a t-SNE PNG
"""
