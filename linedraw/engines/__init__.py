"""Engines that run the conversion and embedding loops somewhere other than this process.

`linedraw.engines.ray`: `linedraw convert --engine ray` and `linedraw index build --engine ray` as Ray Data
pipelines (a model per worker actor, failed tasks retried, any number of machines). Needs `linedraw[ray]`.
"""
