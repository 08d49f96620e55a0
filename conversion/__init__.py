"""Conversion of the official BEATs checkpoints to beats_hf folders and Hub repositories (run from the repo root).

- `beats_conversion`: load an official file safely and convert it to a beats_hf model (importable functions).
- `checkpoints`: the facts about each released file, and the Hub names given to them.
- `publishing`: the repository folder (remote code, model card), written atomically, and the push to the Hub.
- `convert_beats_original_to_hf`: the command line.
"""
