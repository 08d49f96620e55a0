"""Kill every training command at many moments and check that rerunning it finishes and gives, bit for bit, the
result of an uninterrupted run; that a finished run, rerun, changes no file; and that other settings are refused.

The kills come from this file only. A small fork server (`_SERVER`, run with `python -c`) imports torch, transformers
and beats_hf once, then forks one child per killed run; the child patches a Trainer or beats_hf function so that
the process sends itself SIGKILL at the chosen moment (`_install_kill`), e.g. after a checkpoint's weights are written
but before its `trainer_state.json`, or halfway through writing that file. The rerun then runs in this process, and
the uninterrupted reference runs too, all on one thread so that the floating-point results can be compared exactly.
"""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import finetune, write_wav
from safetensors import safe_open

from beats_hf import BeatsConfig, BeatsFeatureExtractor, BeatsModel
from beats_hf.cli import main as cli
from beats_hf.training.finetuning import main as finetune_command

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")

COMMON = ["--use_cpu", "--disable_tqdm", "true", "--report_to", "none", "--dataloader_num_workers", "0", "--seed", "0",
          "--logging_steps", "1"]

# Runs in the fork server's children: the kill moments. `moment` is a dict: kind, step, and optionally stage (a part
# of the Trainer output dir, to pick one stage of `iterate`) or path (a part of a path written).
_KILLS = textwrap.dedent(
    '''
    import os
    import signal

    import transformers
    from transformers import trainer_callback


    def die():
        os.kill(os.getpid(), signal.SIGKILL)


    def _ours(trainer, moment):
        return moment.get("stage", "") in trainer.args.output_dir and trainer.state.global_step == moment.get("step")


    def install_kill(moment):
        kind = moment["kind"]
        Trainer = transformers.Trainer
        if kind == "step":  # between optimizer steps: the step after `step` is never taken
            training_step = Trainer.training_step

            def patched(self, *args, **kwargs):
                if _ours(self, moment):
                    die()
                return training_step(self, *args, **kwargs)

            Trainer.training_step = patched
        elif kind == "save_weights":  # inside a checkpoint save: weights written, no optimizer, no trainer state
            save = Trainer._save_optimizer_and_scheduler

            def patched(self, output_dir):
                if _ours(self, moment):
                    die()
                return save(self, output_dir)

            Trainer._save_optimizer_and_scheduler = patched
        elif kind == "save_state_half":  # halfway through writing the checkpoint's trainer_state.json
            save_to_json = trainer_callback.TrainerState.save_to_json

            def patched(self, json_path):
                if f"checkpoint-{moment['step']}" in json_path and moment.get("stage", "") in json_path:
                    save_to_json(self, json_path)
                    with open(json_path, "r+") as handle:
                        handle.truncate(os.path.getsize(json_path) // 2)
                    die()
                return save_to_json(self, json_path)

            trainer_callback.TrainerState.save_to_json = patched
        elif kind == "after_save":  # right after a complete checkpoint
            save_checkpoint = Trainer._save_checkpoint

            def patched(self, *args, **kwargs):
                save_checkpoint(self, *args, **kwargs)
                if _ours(self, moment):
                    die()

            Trainer._save_checkpoint = patched
        elif kind == "final_weights":  # while writing the final model: the file is cut in half
            save_pretrained = transformers.PreTrainedModel.save_pretrained

            def patched(self, save_directory, *args, **kwargs):
                save_pretrained(self, save_directory, *args, **kwargs)
                if not os.path.basename(os.path.normpath(save_directory)).startswith("checkpoint-"):
                    weights = os.path.join(save_directory, "model.safetensors")
                    with open(weights, "r+") as handle:
                        handle.truncate(os.path.getsize(weights) // 2)
                    die()

            transformers.PreTrainedModel.save_pretrained = patched
        elif kind == "before_finish":  # final files written, the run not yet marked finished
            from beats_hf import run_folder

            def patched(self, metrics):
                die()

            run_folder.RunFolder.finish = patched
        elif kind == "after_rename":  # iterate: a stage's final folder renamed into place, the manifest not updated
            replace = os.replace

            def patched(source, destination):
                replace(source, destination)
                if str(destination).endswith(moment["path"]):
                    die()

            os.replace = patched
        elif kind == "manifest_half":  # iterate: halfway through writing the manifest's temporary file
            from beats_hf.training.pretraining import iterate

            write = iterate.atomic_write_json
            calls = []

            def patched(path, payload, **kwargs):
                stage = payload.get("stages", {}).get(moment["path"], {})
                if stage.get("status") == "complete" and not calls:
                    calls.append(path)
                    with open(f"{path}.tmp", "w") as handle:
                        handle.write('{"stages": {')
                    die()
                return write(path, payload, **kwargs)

            iterate.atomic_write_json = patched
        else:
            raise ValueError(kind)
    '''
)

# The fork server: reads one job per line ({"program", "argv", "moment", "log"}), forks, runs it in the child and
# answers {"signal": N or null, "exit": code or null}.
_SERVER = textwrap.dedent(
    '''
    import json
    import os
    import sys
    import traceback

    import torch  # noqa: F401  imported once, before any fork
    import beats_hf.cli
    import beats_hf.training.finetuning
    import beats_hf.training.pretraining.iterate
    import beats_hf.training.pretraining.train_tokenizer
    import run_audio_classification

    exec(sys.argv[1])  # install_kill

    for line in sys.stdin:
        job = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(log, 1)
            os.dup2(log, 2)
            torch.set_num_threads(1)
            code = 0
            try:
                install_kill(job["moment"])
                if job["program"] == "finetune":
                    code = run_audio_classification.main(job["argv"])
                else:
                    code = beats_hf.cli.main(job["argv"])
            except SystemExit as error:
                code = error.code if isinstance(error.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 99
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code or 0)
        _, status = os.waitpid(pid, 0)
        answer = {"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                  "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}
        print(json.dumps(answer), flush=True)
    '''
)


@pytest.fixture(scope="module")
def server():
    environment = {**os.environ, "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join([str(REPO / "examples"), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", _SERVER, _KILLS], cwd=REPO, env=environment,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    yield process
    process.stdin.close()
    process.wait(timeout=60)


def killed(server, tmp_path: Path, program: str, argv: list[str], **moment) -> str:
    """Run `argv` in a forked child that kills itself at `moment`; assert that it died of SIGKILL; return its log."""
    log = tmp_path / f"killed_{moment['kind']}_{moment.get('step', '')}.log"
    server.stdin.write(json.dumps({"program": program, "argv": argv, "moment": moment, "log": str(log)}) + "\n")
    server.stdin.flush()
    answer = json.loads(server.stdout.readline())
    output = log.read_text()
    assert answer["signal"] == 9, f"{moment}: {answer}\n{output[-3000:]}"
    return output


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    """32 clips of 0.5-1.5 s (tones and noise); with batches of 4, 12 steps cross an epoch boundary."""
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    for index in range(32):
        t = np.arange(int(16000 * rng.uniform(0.5, 1.5))) / 16000
        signal = np.sin(2 * np.pi * rng.uniform(150, 3000) * t) if index % 2 else rng.standard_normal(t.size)
        write_wav(root / f"clip{index:02d}.wav", 0.3 * signal)
    return root


def weights(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(folder / "model.safetensors", "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def losses(folder: Path) -> list[float]:
    return [log["loss"] for log in json.loads((folder / "trainer_state.json").read_text())["log_history"]
            if "loss" in log]


def assert_same_result(folder: Path, reference: Path) -> None:
    """Bit-identical weights and logged losses at every step."""
    ours, theirs = weights(folder), weights(reference)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert losses(folder) == losses(reference)
    assert json.loads((folder / "beats_hf_run.json").read_text())["status"] == "finished"


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def assert_rerun_changes_nothing(run, folder: Path, capsys) -> None:
    """`run()` (a rerun of the finished run in `folder`) says the run is complete and changes no file."""
    before = file_hashes(folder)
    capsys.readouterr()
    run()
    assert "run is complete" in capsys.readouterr().out
    assert file_hashes(folder) == before


# ---------------------------------------------------------------------------------------------------------------------
# beats-hf pretrain
# ---------------------------------------------------------------------------------------------------------------------


def pretrain_argv(audio: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--data", str(audio), "--output_dir", str(out), "--model_preset", "tiny", "--max_steps", "12",
            "--save_steps", "4", "--learning_rate", "2e-3", "--per_device_train_batch_size", "4", "--crop_seconds",
            "1.5", *COMMON, *extra]


@pytest.fixture(scope="module")
def pretrain_reference(audio, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "reference"
    assert cli(pretrain_argv(audio, out)) == 0
    return out


def test_pretrain_finished_rerun_changes_nothing_and_other_settings_are_refused(audio, pretrain_reference, capsys):
    assert_rerun_changes_nothing(lambda: cli(pretrain_argv(audio, pretrain_reference)), pretrain_reference, capsys)
    before = file_hashes(pretrain_reference)
    argv = pretrain_argv(audio, pretrain_reference, "--crop_seconds", "1.0", "--tokenizer", str(pretrain_reference))
    assert cli(argv) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "other settings" in error[0]
    assert "crop_seconds: 1.5 -> 1.0" in error[0] and "tokenizer: 'random_projection' -> " in error[0]
    assert file_hashes(pretrain_reference) == before
    # A longer run is not another run: a finished one continues from its last checkpoint.
    longer = pretrain_reference.parent / "longer"
    assert cli(pretrain_argv(audio, longer, "--max_steps", "8")) == 0
    first = losses(longer)
    capsys.readouterr()
    assert cli(pretrain_argv(audio, longer)) == 0
    output = capsys.readouterr().out
    assert "continuing to 12" in output and "resuming from" in output and f"{longer / 'checkpoint-8'}" in output
    assert len(losses(longer)) == 12 and losses(longer)[:8] == first


PRETRAIN_KILLS = {
    # moment -> what the rerun must print
    "mid_training": (dict(kind="step", step=6), "resuming from"),
    "first_save_weights": (dict(kind="save_weights", step=4),
                           "skipping incomplete checkpoint-4 (no trainer_state.json)"),
    "final_weights": (dict(kind="final_weights"), "resuming from"),
    "before_finish": (dict(kind="before_finish"), "resuming from"),
}


@pytest.mark.parametrize("case", sorted(PRETRAIN_KILLS))
def test_pretrain_killed_then_rerun_matches_an_uninterrupted_run(case, audio, pretrain_reference, server, tmp_path,
                                                                  capsys):
    moment, expected = PRETRAIN_KILLS[case]
    out = tmp_path / "run"
    killed(server, tmp_path, "cli", pretrain_argv(audio, out), **moment)
    capsys.readouterr()
    assert cli(pretrain_argv(audio, out)) == 0
    assert expected in capsys.readouterr().out
    assert_same_result(out, pretrain_reference)


def test_pretrain_killed_twice_while_saving_the_same_checkpoint(audio, pretrain_reference, server, tmp_path, capsys):
    """Killed halfway through checkpoint-8's trainer_state.json; the rerun resumes from checkpoint-4 and is killed
    again while writing checkpoint-8 anew (weights written, the truncated state of the first attempt still there);
    the third run resumes from checkpoint-4 again and finishes."""
    out = tmp_path / "run"
    killed(server, tmp_path, "cli", pretrain_argv(audio, out), kind="save_state_half", step=8)
    assert json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4
    second = killed(server, tmp_path, "cli", pretrain_argv(audio, out), kind="save_weights", step=8)
    assert "skipping incomplete checkpoint-8 (trainer_state.json is truncated or unreadable)" in second
    capsys.readouterr()
    assert cli(pretrain_argv(audio, out)) == 0
    output = capsys.readouterr().out
    assert "skipping incomplete checkpoint-8" in output and "resuming from" in output
    assert_same_result(out, pretrain_reference)


# ---------------------------------------------------------------------------------------------------------------------
# beats-hf train-tokenizer
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> tuple[Path, Path]:
    folders = []
    for seed in (0, 1):
        folder = tmp_path_factory.mktemp(f"teacher{seed}")
        torch.manual_seed(seed)
        BeatsModel(BeatsConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                               patch_embedding_dim=32, num_conv_pos_embeddings=16,
                               num_conv_pos_embedding_groups=4)).save_pretrained(folder)
        folders.append(folder)
    return folders[0], folders[1]


def tokenizer_argv(teacher: Path, audio: Path, out: Path, *extra: str) -> list[str]:
    return ["train-tokenizer", "--teacher", str(teacher), "--data", str(audio), "--output_dir", str(out),
            "--max_steps", "8", "--save_steps", "4", "--learning_rate", "1e-4", "--per_device_train_batch_size", "4",
            "--crop_seconds", "1.5", "--student_codebook_size", "64", "--student_codebook_dim", "16", *COMMON, *extra]


@pytest.fixture(scope="module")
def tokenizer_reference(teachers, audio, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer") / "reference"
    assert cli(tokenizer_argv(teachers[0], audio, out)) == 0
    return out


def test_tokenizer_finished_rerun_changes_nothing_and_other_settings_are_refused(teachers, audio,
                                                                                 tokenizer_reference, capsys):
    assert_rerun_changes_nothing(lambda: cli(tokenizer_argv(teachers[0], audio, tokenizer_reference)),
                                 tokenizer_reference, capsys)
    before = file_hashes(tokenizer_reference)
    assert cli(tokenizer_argv(teachers[1], audio, tokenizer_reference, "--student_codebook_dim", "8")) == 1
    error = capsys.readouterr().err
    assert f"teacher: '{teachers[0]}' -> '{teachers[1]}'" in error and "'codebook_dim': 16" in error
    assert file_hashes(tokenizer_reference) == before


TOKENIZER_KILLS = {
    "first_save_state_half": (dict(kind="save_state_half", step=4),
                              "skipping incomplete checkpoint-4 (trainer_state.json is truncated or unreadable)"),
    "after_first_save": (dict(kind="after_save", step=4), "resuming from"),
    "final_weights": (dict(kind="final_weights"), "resuming from"),
}


@pytest.mark.parametrize("case", sorted(TOKENIZER_KILLS))
def test_tokenizer_killed_then_rerun_matches_an_uninterrupted_run(case, teachers, audio, tokenizer_reference, server,
                                                                   tmp_path, capsys):
    moment, expected = TOKENIZER_KILLS[case]
    out = tmp_path / "run"
    killed(server, tmp_path, "cli", tokenizer_argv(teachers[0], audio, out), **moment)
    capsys.readouterr()
    assert cli(tokenizer_argv(teachers[0], audio, out)) == 0
    assert expected in capsys.readouterr().out
    assert_same_result(out, tokenizer_reference)


# ---------------------------------------------------------------------------------------------------------------------
# Fine-tuning (examples/run_audio_classification.py)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    rng = np.random.default_rng(1)
    for split, count in (("train", 8), ("test", 3)):
        for kind in ("tone", "noise"):
            (root / split / kind).mkdir(parents=True)
            for index in range(count):
                t = np.arange(int(16000 * rng.uniform(0.6, 1.2))) / 16000
                tone = np.sin(2 * np.pi * rng.uniform(200, 2000) * t)
                signal = tone if kind == "tone" else rng.standard_normal(t.size)
                write_wav(root / split / kind / f"{index}.wav", 0.3 * signal)
    return root


@pytest.fixture(scope="module")
def pretrained(teachers, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pretrained")
    BeatsModel.from_pretrained(teachers[0]).save_pretrained(folder)
    BeatsFeatureExtractor().save_pretrained(folder)
    return folder


def finetune_argv(pretrained: Path, labelled: Path, out: Path, *extra: str) -> list[str]:
    # Mixup and time masks draw from the global RNGs, which a resumed run restores from the checkpoint.
    return ["--model_name_or_path", str(pretrained), "--dataset", str(labelled), "--output_dir", str(out),
            "--do_train", "--do_eval", "--max_steps", "12", "--save_steps", "4", "--learning_rate", "3e-3",
            "--per_device_train_batch_size", "4", "--max_length_seconds", "1.0", "--linear_probe_head",
            "--mixup_alpha", "0.5", "--time_mask_frames", "10", *COMMON, *extra]


@pytest.fixture(scope="module")
def finetune_reference(pretrained, labelled, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finetune") / "reference"
    finetune(finetune_argv(pretrained, labelled, out))
    return out


def evaluation(folder: Path) -> dict:
    results = json.loads((folder / "all_results.json").read_text())
    return {key: value for key, value in results.items()
            if key.startswith(("eval_accuracy", "eval_loss", "linear_probe_accuracy", "linear_probe_loss"))}


def test_finetune_finished_rerun_changes_nothing_and_other_settings_are_refused(pretrained, labelled,
                                                                                finetune_reference, capsys):
    assert set(evaluation(finetune_reference)) == {"eval_accuracy", "eval_loss", "linear_probe_accuracy",
                                                   "linear_probe_loss"}
    assert_rerun_changes_nothing(lambda: finetune(finetune_argv(pretrained, labelled, finetune_reference)),
                                 finetune_reference, capsys)
    before = file_hashes(finetune_reference)
    # examples/run_audio_classification.py: a refused folder is one line on stderr and exit status 1.
    assert finetune_command(finetune_argv(pretrained, labelled, finetune_reference, "--layer_decay", "0.9")) == 1
    assert "layer_decay: 1.0 -> 0.9" in capsys.readouterr().err
    assert file_hashes(finetune_reference) == before


FINETUNE_KILLS = {
    "before_first_checkpoint": (dict(kind="step", step=2), None),
    "save_weights": (dict(kind="save_weights", step=8), "skipping incomplete checkpoint-8 (no trainer_state.json)"),
    "before_finish": (dict(kind="before_finish"), "resuming from"),
}


@pytest.mark.parametrize("case", sorted(FINETUNE_KILLS))
def test_finetune_killed_then_rerun_matches_an_uninterrupted_run(case, pretrained, labelled, finetune_reference,
                                                                  server, tmp_path, capsys):
    moment, expected = FINETUNE_KILLS[case]
    out = tmp_path / "run"
    killed(server, tmp_path, "finetune", finetune_argv(pretrained, labelled, out), **moment)
    capsys.readouterr()
    finetune(finetune_argv(pretrained, labelled, out))
    output = capsys.readouterr().out
    assert ("resuming from" not in output) if expected is None else (expected in output)
    assert_same_result(out, finetune_reference)
    # The linear probe's scores, taken before the first checkpoint, survive the resume.
    assert evaluation(out) == evaluation(finetune_reference)


# ---------------------------------------------------------------------------------------------------------------------
# beats-hf iterate
# ---------------------------------------------------------------------------------------------------------------------

STAGES = ["iteration_1/tokenizer", "iteration_1/ssl", "iteration_2/tokenizer", "iteration_2/ssl"]


def iterate_argv(audio: Path, out: Path, *extra: str) -> list[str]:
    return ["iterate", "--data", str(audio), "--output_dir", str(out), "--iterations", "2", "--model_preset", "tiny",
            "--max_steps", "4", "--tokenizer_max_steps", "4", "--save_steps", "2", "--per_device_train_batch_size",
            "4", "--crop_seconds", "1.5", *COMMON, *extra]


@pytest.fixture(scope="module")
def iterate_reference(audio, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("iterate") / "reference"
    assert cli(iterate_argv(audio, out)) == 0
    return out


def manifest(out: Path) -> dict:
    return json.loads((out / "iterations.json").read_text())


def assert_same_stages(out: Path, reference: Path) -> None:
    for stage in STAGES[1:]:
        ours, theirs = weights(out / stage), weights(reference / stage)
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs), stage
        assert losses(out / stage) == losses(reference / stage), stage
    assert all(entry["status"] == "complete" for entry in manifest(out)["stages"].values())
    assert json.loads((out / "beats_hf_run.json").read_text())["status"] == "finished"
    leftovers = [path.name for path in out.rglob("*") if path.name.endswith((".work", ".partial", ".tmp"))]
    assert not leftovers


def test_iterate_finished_rerun_changes_nothing_and_other_settings_are_refused(audio, iterate_reference, capsys):
    assert_rerun_changes_nothing(lambda: cli(iterate_argv(audio, iterate_reference)), iterate_reference, capsys)
    before = file_hashes(iterate_reference)
    assert cli(iterate_argv(audio, iterate_reference, "--learning_rate", "1e-3", "--mask_ratio", "0.5")) == 1
    error = capsys.readouterr().err
    assert "mask_ratio: 0.75 -> 0.5" in error and "learning_rate: 5e-05 -> 0.001" in error
    assert file_hashes(iterate_reference) == before


def test_iterate_killed_after_a_stage_checkpoint_resumes_that_stage(audio, iterate_reference, server, tmp_path,
                                                                    capsys):
    """The moment of the old in-package hook: right after iteration_2/ssl's first checkpoint."""
    out = tmp_path / "run"
    killed(server, tmp_path, "cli", iterate_argv(audio, out), kind="after_save", step=2, stage="iteration_2/ssl")
    record = manifest(out)
    done = STAGES[:3]
    assert [name for name, entry in record["stages"].items() if entry["status"] == "complete"] == done
    assert record["stages"]["iteration_2/ssl"]["status"] == "running"
    assert not (out / "iteration_2/ssl").exists()  # the final folder appears only once the stage is done
    before = {stage: file_hashes(out / stage) for stage in done}
    capsys.readouterr()
    assert cli(iterate_argv(audio, out)) == 0
    output = capsys.readouterr().out
    assert output.count("already done") == 3 and "resuming from iteration_2/ssl.work/checkpoint-2" in output
    assert {stage: file_hashes(out / stage) for stage in done} == before  # finished stages untouched
    entry = manifest(out)["stages"]["iteration_2/ssl"]
    assert entry["attempts"] == 2 and entry["resumed_from"].endswith("iteration_2/ssl.work/checkpoint-2")
    assert_same_stages(out, iterate_reference)


ITERATE_KILLS = {
    "tokenizer_save_weights": (dict(kind="save_weights", step=4, stage="iteration_2/tokenizer"),
                               "skipping incomplete checkpoint-4 (no trainer_state.json)"),
    "after_rename": (dict(kind="after_rename", path="iteration_1/ssl"), "found finished in iteration_1/ssl"),
    "last_manifest_half": (dict(kind="manifest_half", path="iteration_2/ssl"), "found finished in iteration_2/ssl"),
}


@pytest.mark.parametrize("case", sorted(ITERATE_KILLS))
def test_iterate_killed_then_rerun_matches_an_uninterrupted_run(case, audio, iterate_reference, server, tmp_path,
                                                                 capsys):
    moment, expected = ITERATE_KILLS[case]
    out = tmp_path / "run"
    killed(server, tmp_path, "cli", iterate_argv(audio, out), **moment)
    capsys.readouterr()
    assert cli(iterate_argv(audio, out)) == 0
    assert expected in capsys.readouterr().out
    assert_same_stages(out, iterate_reference)
