"""The end-to-end demo: a rendered instrument corpus, baselines, the full BEATs run and its report."""
