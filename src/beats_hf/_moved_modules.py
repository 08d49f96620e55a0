"""The training kit's old module paths (before it moved to `beats_hf.training`), kept importable with a warning.

`import beats_hf.pretraining.pretrain` (or `from beats_hf.finetuning import run_finetuning`) still works: a finder at
the front of `sys.meta_path` answers for exactly the names below, warns once per name, and hands out the module at its
new path, so old and new names are the same module object (no second copy with its own state). Nothing here imports
the training kit until an old name is imported.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# old name -> new name; removed in beats_hf 0.3
MOVED = {
    "beats_hf.finetuning": "beats_hf.training.finetuning",
    "beats_hf.linear_probe": "beats_hf.training.linear_probe",
    "beats_hf.run_folder": "beats_hf.training.run_folder",
    "beats_hf.metrics": "beats_hf.training.metrics",
    "beats_hf.pretraining": "beats_hf.training.pretraining",
    "beats_hf.pretraining.collator": "beats_hf.training.pretraining.collator",
    "beats_hf.pretraining.iterate": "beats_hf.training.pretraining.iterate",
    "beats_hf.pretraining.masking": "beats_hf.training.pretraining.masking",
    "beats_hf.pretraining.pretrain": "beats_hf.training.pretraining.pretrain",
    "beats_hf.pretraining.quantization": "beats_hf.training.pretraining.quantization",
    "beats_hf.pretraining.train_tokenizer": "beats_hf.training.pretraining.train_tokenizer",
    "beats_hf.pretraining.tokenizer_training": "beats_hf.training.pretraining.distillation",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        return None  # a throwaway module; exec_module puts the real one in its place

    def exec_module(self, module) -> None:
        new_name = MOVED[module.__name__]
        warnings.warn(
            f"`{module.__name__}` moved to `{new_name}`; the old name will be removed in beats_hf 0.3.",
            FutureWarning,
            stacklevel=2,
        )
        # The import system returns whatever sys.modules holds under the name once exec_module is done.
        sys.modules[module.__name__] = importlib.import_module(new_name)


def old_submodule(old_package: str, name: str):
    """For a moved package's `__getattr__`: `from OLD_PACKAGE import NAME` where NAME was renamed (the import system
    looks the name up in the new package, which has no such file)."""
    old_name = f"{old_package}.{name}"
    if old_name not in MOVED:
        raise AttributeError(f"module {MOVED.get(old_package, old_package)!r} has no attribute {name!r}")
    return importlib.import_module(old_name)


def install() -> None:
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())
