"""Sketch-domain retrieval: photos indexed by the embeddings of their drawings, searched with sketches.

`embed` (embedders), `index` (Faiss + SQLite + manifest on disk), `gallery` (build/add/remove, resumable),
`objects` (object crops), `metrics` and `evaluate` (SBIR metrics).
"""
