"""pipeline: the verbs above the engines: recipes (`recipe`), "flags > recipe > defaults" (`overlay`),
the one-pass release (`release`, `release_files`, `release_checks`) and the offline demo (`demo`).

Layer order: the engines (converter, verification, gguf, card, publishing) never import from here;
only `hubtools.cli` (and the public face) does.
"""
