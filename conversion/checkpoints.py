"""What is known about each released BEATs checkpoint, keyed by its official file name, and the Hub names we give them.

The facts come from the official README and the paper (Chen et al., 2022, Tables 1 and 2), as summarised in
`official-beats-spec.md` §14. They are the paper's numbers, not re-measured by beats_hf.
"""

import re
from dataclasses import dataclass

# Paper results per iteration: (benchmark, value as printed). Table 1 for iterations 1-3 (single models); Table 2 for
# the two iteration-3+ variants, which Table 1 merges into one row.
_RESULTS = {
    "iter1": (("AS-2M mAP", "47.9"), ("AS-20K mAP", "36.0"), ("ESC-50 acc.", "94.0"), ("KS1 acc.", "98.0"),
              ("KS2 acc.", "98.3"), ("ER acc.", "65.9")),
    "iter2": (("AS-2M mAP", "48.1"), ("AS-20K mAP", "38.3"), ("ESC-50 acc.", "95.1"), ("KS1 acc.", "97.7"),
              ("KS2 acc.", "98.3"), ("ER acc.", "66.1")),
    "iter3": (("AS-2M mAP", "48.0"), ("AS-20K mAP", "38.3"), ("ESC-50 acc.", "95.6"), ("KS1 acc.", "97.7"),
              ("KS2 acc.", "98.3"), ("ER acc.", "64.5")),
    "iter3_plus_AS20K": (("AS-2M mAP", "48.0"), ("AS-20K mAP", "38.9"), ("ESC-50 acc.", "96.2")),
    "iter3_plus_AS2M": (("AS-2M mAP", "48.6"), ("AS-20K mAP", "41.8 *"), ("ESC-50 acc.", "97.1 †")),
}
_RESULTS_NOTE = {
    "iter1": "Paper Table 1 (single models, 90M parameters, AudioSet data only).",
    "iter2": "Paper Table 1 (single models, 90M parameters, AudioSet data only).",
    "iter3": "Paper Table 1 (single models, 90M parameters, AudioSet data only).",
    "iter3_plus_AS20K": "Paper Table 2 (tokenizer teacher: the iteration-2 model fine-tuned on AS-20K).",
    "iter3_plus_AS2M": (
        "Paper Table 2 (tokenizer teacher: the iteration-2 model fine-tuned on AS-2M). * AS-2M supervised data was "
        "used in pre-training (through the tokenizer). † Without extra AS-2M supervised pre-training."
    ),
}
# How each acoustic tokenizer was trained (iteration 1 used a random projection, not a trained tokenizer).
_TEACHER = {
    "iter2": "self-distilled from the iteration-1 BEATs model",
    "iter3": "distilled from the iteration-2 BEATs model",
    "iter3_plus_AS20K": "distilled from the iteration-2 BEATs model after supervised fine-tuning on AudioSet-20K",
    "iter3_plus_AS2M": "distilled from the iteration-2 BEATs model after supervised fine-tuning on AudioSet-2M",
}
_TOKENIZER_FILE = {
    "iter2": "Tokenizer_iter2.pt",
    "iter3": "Tokenizer_iter3.pt",
    "iter3_plus_AS20K": "Tokenizer_iter3_plus_AS20K.pt",
    "iter3_plus_AS2M": "Tokenizer_iter3_plus_AS2M.pt",
}
_ITERATION_TITLE = {
    "iter1": "iteration 1",
    "iter2": "iteration 2",
    "iter3": "iteration 3",
    "iter3_plus_AS20K": "iteration 3+ (AS20K)",
    "iter3_plus_AS2M": "iteration 3+ (AS2M)",
}
_FINE_TUNING_RUN = {
    "cpt1": "cpt1 uses the paper's fine-tuning hyper-parameters (Table 4)",
    "cpt2": (
        "cpt2 differs from cpt1 only in its fine-tuning hyper-parameters (learning rate 5e-5, 100k steps); the "
        "authors call it slightly worse than cpt1 and release it to reproduce the ensembles"
    ),
}


@dataclass(frozen=True)
class CheckpointFacts:
    """One released file: its kind ('pretrained', 'finetuned' or 'tokenizer'), iteration and fine-tuning run."""

    kind: str
    iteration: str
    run: str | None = None  # "cpt1" / "cpt2" for the fine-tuned files

    @property
    def title(self) -> str:
        iteration = _ITERATION_TITLE[self.iteration]
        if self.kind == "tokenizer":
            return f"BEATs acoustic tokenizer, {iteration}"
        if self.kind == "finetuned":
            return f"BEATs {iteration}, fine-tuned on AudioSet-2M ({self.run})"
        return f"BEATs {iteration}, pre-trained"

    @property
    def description(self) -> str:
        if self.kind == "tokenizer":
            return (
                f"The BEATs acoustic tokenizer of {_ITERATION_TITLE[self.iteration]}: a BEATs encoder, a projection "
                "and a codebook that labels every 16x16 patch of the fbank with one discrete code. It was "
                f"{_TEACHER[self.iteration]}, and it produced the masked-prediction targets for pre-training the "
                f"BEATs model of {_ITERATION_TITLE[self.iteration]}."
            )
        if self.iteration == "iter1":
            targets = "the random-projection tokenizer of iteration 1 (no file is released for it)"
        else:
            tokenizer_file = _TOKENIZER_FILE[self.iteration]
            targets = f"the acoustic tokenizer `{tokenizer_file}` ({_TEACHER[self.iteration]})"
        text = (
            f"The BEATs audio encoder of {_ITERATION_TITLE[self.iteration]}, self-supervised on AudioSet-2M audio by "
            f"predicting the discrete labels of masked 16x16 fbank patches, with targets from {targets}."
        )
        if self.kind == "finetuned":
            text += (
                " It was then fine-tuned with labels on AudioSet-2M (527 sound classes, multi-label: use a sigmoid); "
                f"{_FINE_TUNING_RUN[self.run]}."
            )
        return text

    @property
    def results(self) -> tuple[tuple[str, str], ...]:
        return _RESULTS[self.iteration]

    @property
    def results_note(self) -> str:
        if self.kind == "tokenizer":
            return f"Results of the BEATs model pre-trained with this tokenizer. {_RESULTS_NOTE[self.iteration]}"
        note = f"Results of this iteration's model fine-tuned on each benchmark. {_RESULTS_NOTE[self.iteration]}"
        if self.kind == "finetuned":
            note += " The paper reports one fine-tuned model per iteration; cpt1 follows its recipe."
        return note


# The released files (official README), one row each. Any other file name gets a generic model card.
OFFICIAL_CHECKPOINTS: dict[str, CheckpointFacts] = {
    "BEATs_iter1.pt": CheckpointFacts("pretrained", "iter1"),
    "BEATs_iter1_finetuned_on_AS2M_cpt1.pt": CheckpointFacts("finetuned", "iter1", "cpt1"),
    "BEATs_iter1_finetuned_on_AS2M_cpt2.pt": CheckpointFacts("finetuned", "iter1", "cpt2"),
    "BEATs_iter2.pt": CheckpointFacts("pretrained", "iter2"),
    "BEATs_iter2_finetuned_on_AS2M_cpt1.pt": CheckpointFacts("finetuned", "iter2", "cpt1"),
    "BEATs_iter2_finetuned_on_AS2M_cpt2.pt": CheckpointFacts("finetuned", "iter2", "cpt2"),
    "BEATs_iter3.pt": CheckpointFacts("pretrained", "iter3"),
    "BEATs_iter3_finetuned_on_AS2M_cpt1.pt": CheckpointFacts("finetuned", "iter3", "cpt1"),
    "BEATs_iter3_finetuned_on_AS2M_cpt2.pt": CheckpointFacts("finetuned", "iter3", "cpt2"),
    "BEATs_iter3_plus_AS20K.pt": CheckpointFacts("pretrained", "iter3_plus_AS20K"),
    "BEATs_iter3_plus_AS20K_finetuned_on_AS2M_cpt1.pt": CheckpointFacts("finetuned", "iter3_plus_AS20K", "cpt1"),
    "BEATs_iter3_plus_AS20K_finetuned_on_AS2M_cpt2.pt": CheckpointFacts("finetuned", "iter3_plus_AS20K", "cpt2"),
    "BEATs_iter3_plus_AS2M.pt": CheckpointFacts("pretrained", "iter3_plus_AS2M"),
    "BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt1.pt": CheckpointFacts("finetuned", "iter3_plus_AS2M", "cpt1"),
    "BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt": CheckpointFacts("finetuned", "iter3_plus_AS2M", "cpt2"),
    "Tokenizer_iter2.pt": CheckpointFacts("tokenizer", "iter2"),
    "Tokenizer_iter3.pt": CheckpointFacts("tokenizer", "iter3"),
    "Tokenizer_iter3_plus_AS20K.pt": CheckpointFacts("tokenizer", "iter3_plus_AS20K"),
    "Tokenizer_iter3_plus_AS2M.pt": CheckpointFacts("tokenizer", "iter3_plus_AS2M"),
}


def facts_for(file_name: str) -> CheckpointFacts | None:
    return OFFICIAL_CHECKPOINTS.get(file_name)


def hub_name(file_name: str) -> str:
    """Hub repository name for a checkpoint file: lower case, runs of other characters -> '-', 'finetuned-on-' ->
    'finetuned-', and a 'beats-' prefix when missing.

    BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt1.pt -> beats-iter3-plus-as2m-finetuned-as2m-cpt1;
    Tokenizer_iter3.pt -> beats-tokenizer-iter3.
    """
    stem = re.sub(r"\.(pt|pth|ckpt)$", "", file_name, flags=re.IGNORECASE)
    name = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")
    name = name.replace("finetuned-on-", "finetuned-")
    if not name.startswith("beats"):
        name = f"beats-{name}" if name else "beats"
    return name[:96]  # the Hub's limit on repository names
