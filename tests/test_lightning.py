"""The PyTorch Lightning adapter (supervisor/worker/lightning/): how it reads the program's settings, where
it finds and sets the batch, and how a resumed epoch is placed. The pure parts alone, then the adapter on
real Lightning fits in this process (a one-weight model: a second each), a stop and a resume included.
The end-to-end run under a real memory cap is tests/e2e/test_lightning.py."""

import json
import signal

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from oomladder.worker.lightning import trainer as lightning
from oomladder.worker.lightning.order import SampleOrder, batches_on_new_plan, shift_batch_progress
from oomladder.worker.state import STATE

pl = pytest.importorskip("pytorch_lightning")


# --- the program's precision, as the plan names it, and back ---

@pytest.mark.parametrize(("flag", "precision"), [
    (None, "fp32"), ("32", "fp32"), (32, "fp32"), ("32-true", "fp32"),
    ("bf16", "bf16"), ("bf16-mixed", "bf16"), ("bf16-true", "bf16"),
    ("16", "fp16"), (16, "fp16"), ("16-mixed", "fp16"), ("16-true", "fp16"),
    ("64-true", None), ("transformer-engine", None)])
def test_a_lightning_precision_flag_is_named_as_the_plan_names_it(flag, precision):
    assert lightning.precision_of(flag) == precision


def test_the_plan_s_precision_asks_lightning_for_mixed_precision():
    assert [lightning.precision_flag(p) for p in ("fp32", "bf16", "fp16")] == ["32-true", "bf16-mixed", "16-mixed"]


def trainer_arguments(plan, **program):
    own = lightning.own_settings(program)
    kwargs = dict(program)
    lightning.apply_to_trainer_arguments(kwargs, own, plan)
    return kwargs


def test_the_plan_sets_accumulation_and_precision_and_whole_number_limits_follow_the_smaller_micro_batch():
    assert trainer_arguments({"gradient_accumulation_steps": 2, "precision": "bf16"}, precision="32-true",
                             limit_train_batches=100, val_check_interval=50) == {
        "precision": "bf16-mixed", "accumulate_grad_batches": 2, "limit_train_batches": 200, "val_check_interval": 100}
    # A fraction of the epoch is the same data at any micro-batch; the int 1 is one batch, the float 1.0 all.
    assert trainer_arguments({"gradient_accumulation_steps": 4}, accumulate_grad_batches=2,
                             limit_train_batches=0.5, val_check_interval=1.0) == {
        "accumulate_grad_batches": 4, "limit_train_batches": 0.5, "val_check_interval": 1.0}
    assert trainer_arguments({"gradient_accumulation_steps": 4}, accumulate_grad_batches=2,
                             limit_train_batches=1)["limit_train_batches"] == 2


def test_what_the_program_already_runs_is_left_as_it_wrote_it():
    assert trainer_arguments({"precision": "bf16", "gradient_accumulation_steps": 1}, precision="bf16-true") == {
        "precision": "bf16-true"}
    assert trainer_arguments({"precision": "bf16"}) == {"precision": "bf16-mixed"}  # the default is 32-true


def test_a_precision_plugin_of_the_program_s_own_is_not_overridden():
    plugin = type("MixedPrecision", (), {})()
    assert trainer_arguments({"precision": "bf16"}, plugins=[plugin]) == {"plugins": [plugin]}


def test_under_a_gradient_accumulation_scheduler_the_accumulation_is_left_to_it():
    """The schedule would set the accumulation back each epoch: a halved batch would halve the effective batch."""
    scheduler = type("GradientAccumulationScheduler", (), {})()
    assert trainer_arguments({"gradient_accumulation_steps": 2}, callbacks=[scheduler]) == {"callbacks": [scheduler]}


def test_the_program_s_settings_are_read_from_pl_trainer_variables_too(monkeypatch):
    monkeypatch.setenv("PL_TRAINER_PRECISION", "bf16-mixed")
    monkeypatch.setenv("PL_TRAINER_ACCUMULATE_GRAD_BATCHES", "4")
    own = lightning.own_settings({})
    assert (own["precision"], own["accumulation"]) == ("bf16", 4)


# --- a resumed epoch: recounted in the new micro-batches, the same order, after the samples already trained ---

def test_an_epoch_s_position_is_recounted_in_the_new_micro_batches():
    assert batches_on_new_plan(4, old_batch=16, new_batch=8) == 8
    assert batches_on_new_plan(8, old_batch=8, new_batch=16) == 4
    assert batches_on_new_plan(3, old_batch=8, new_batch=16) is None  # half a batch: no exact place


def test_lightning_s_batch_progress_moves_as_a_whole():
    # As Lightning saves it at a step's end (on_train_batch_end): completed lags by the batch in flight.
    progress = {"total": {"ready": 6, "started": 6, "processed": 6, "completed": 5},
                "current": {"ready": 2, "started": 2, "processed": 2, "completed": 1}, "is_last_batch": False}
    shift_batch_progress(progress, 2)
    assert progress == {"total": {"ready": 8, "started": 8, "processed": 8, "completed": 7},
                        "current": {"ready": 4, "started": 4, "processed": 4, "completed": 3}, "is_last_batch": False}


def epoch(order):
    return list(order)


def test_a_shuffled_epoch_is_drawn_again_in_its_order_and_goes_on_after_the_samples_already_trained():
    torch.manual_seed(1)
    first = SampleOrder(RandomSampler(range(20)))
    uninterrupted = epoch(first)
    torch.manual_seed(2)  # the resumed attempt arrives at the epoch with other random states
    outside = torch.get_rng_state()
    resumed = SampleOrder(RandomSampler(range(20)))
    resumed.resume(first.drawn_from, skip=8)
    assert epoch(resumed) == uninterrupted[8:]
    assert torch.equal(torch.get_rng_state(), outside)  # the program's own randomness is not moved
    assert epoch(resumed) != uninterrupted[8:]  # once: the next epoch draws as it comes


def test_a_sampler_s_own_generator_is_drawn_again_from_its_state_at_the_epoch_s_start():
    first = SampleOrder(RandomSampler(range(20), generator=torch.Generator().manual_seed(5)))
    epoch(first)
    uninterrupted = epoch(first)  # the second epoch: the generator had moved on
    resumed = SampleOrder(RandomSampler(range(20), generator=torch.Generator().manual_seed(5)))
    resumed.resume(first.drawn_from, skip=3)
    assert epoch(resumed) == uninterrupted[3:]


def test_a_sequential_or_distributed_sampler_only_skips_and_keeps_its_length_and_epoch():
    order = SampleOrder(SequentialSampler(range(10)))
    order.resume(None, skip=4)
    assert (len(order), epoch(order), epoch(order)) == (10, [4, 5, 6, 7, 8, 9], list(range(10)))
    distributed = SampleOrder(DistributedSampler(range(10), num_replicas=2, rank=0, shuffle=True, seed=3))
    distributed.set_epoch(1)
    assert distributed.sampler.epoch == 1 and len(distributed) == 5


def test_a_dataloader_over_the_order_yields_the_remaining_batches_only():
    loader = DataLoader(range(10), batch_size=2)
    loader.batch_sampler.sampler = order = SampleOrder(loader.batch_sampler.sampler)
    order.resume(None, skip=4)
    assert len(loader) == 5  # Lightning counts the skipped batches as already fetched
    assert [b.tolist() for b in loader] == [[4, 5], [6, 7], [8, 9]]


# --- the adapter on real Lightning fits, in this process ---

class Numbers(pl.LightningDataModule):
    def __init__(self, batch_size=None, n=32, shuffle=False, as_hparam=False):
        super().__init__()
        if as_hparam:
            self.save_hyperparameters({"batch_size": batch_size})
        elif batch_size is not None:
            self.batch_size = batch_size
        self.n, self.shuffle, self.as_hparam = n, shuffle, as_hparam
        self.module = None

    def train_dataloader(self):
        return DataLoader(torch.arange(self.n), batch_size=self.batch(), shuffle=self.shuffle)

    def batch(self):
        if self.as_hparam:
            return self.hparams.batch_size
        if hasattr(self, "batch_size"):
            return self.batch_size
        return getattr(self.module, "batch_size", None) or self.module.hparams.batch_size


class OneWeight(pl.LightningModule):
    def __init__(self, batch_size=None, as_attribute=False):
        super().__init__()
        if as_attribute:
            self.batch_size = batch_size
        elif batch_size is not None:
            self.save_hyperparameters({"batch_size": batch_size})
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        return ((batch.float() - self.weight) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Samples(pl.Callback):
    """The samples of each optimizer step, as the program sees them."""

    def __init__(self, stop_after=None):
        self.steps, self.pending, self.last, self.stop_after = {}, [], None, stop_after

    def on_train_start(self, trainer, pl_module):
        self.last = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.pending += batch.tolist()
        if trainer.global_step != self.last:
            self.last = trainer.global_step
            self.steps[trainer.global_step], self.pending = self.pending, []
            if trainer.global_step == self.stop_after:
                STATE.stop_requested = signal.SIGTERM  # as the handler does when the signal comes


@pytest.fixture
def attempt(tmp_path, monkeypatch):
    """The adapter installed on Lightning's Trainer for this test only, writing into an attempt folder."""
    from pytorch_lightning.callbacks import batch_size_finder
    from pytorch_lightning.loops import fit_loop
    from pytorch_lightning.trainer import trainer as trainer_module
    for owner, name in ((trainer_module.Trainer, "__init__"), (trainer_module.Trainer, "fit"),
                        (fit_loop, "_process_dataloader"), (batch_size_finder.BatchSizeFinder, "scale_batch_size")):
        monkeypatch.setattr(owner, name, getattr(owner, name))  # put back as they were after the test
    lightning.patch_trainer(trainer_module)
    lightning.patch_fit_loop(fit_loop)
    lightning.patch_batch_size_finder(batch_size_finder)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    monkeypatch.setenv("OOMLADDER_RUN_DIR", str(tmp_path))

    def start(number, plan=None, resume_from=None):
        folder = tmp_path / "attempts" / f"{number:03d}"
        folder.mkdir(parents=True)
        monkeypatch.setenv("OOMLADDER_ATTEMPT_DIR", str(folder))
        monkeypatch.setenv("OOMLADDER_PLAN", json.dumps(plan or {}))
        if resume_from:
            monkeypatch.setenv("OOMLADDER_RESUME_FROM", resume_from)
        else:
            monkeypatch.delenv("OOMLADDER_RESUME_FROM", raising=False)
        monkeypatch.setattr(STATE, "resumed", False)  # a new process
        monkeypatch.setattr(STATE, "observed", {"plan": {}, "facts": {}})
        monkeypatch.setattr(STATE, "stop_requested", 0)
        return folder

    yield start
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def fit(model, data, callback, **trainer):
    run = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     accelerator="cpu", devices=1, callbacks=[callback], **trainer)
    data.module = model
    run.fit(model, datamodule=data)
    return run


def observed(folder):
    return json.loads((folder / "observed.0.json").read_text())


def progress(folder):
    return [json.loads(line) for line in (folder / "progress.0.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("holder", ["datamodule attribute", "datamodule hyperparameter", "module hyperparameter",
                                    "module attribute"])
def test_the_batch_is_found_and_set_where_lightning_s_batch_size_finder_finds_it(attempt, holder):
    folder = attempt(1, plan={"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2})
    on_data = holder.startswith("datamodule")
    data = Numbers(4 if on_data else None, as_hparam=holder == "datamodule hyperparameter")
    model = OneWeight(None if on_data else 4, as_attribute=holder == "module attribute")
    samples = Samples()
    run = fit(model, data, samples, max_steps=3, accumulate_grad_batches=1)
    assert observed(folder)["plan"]["per_device_train_batch_size"] == 4  # the program's own, before the plan
    assert observed(folder)["plan"]["gradient_accumulation_steps"] == 1
    assert run.accumulate_grad_batches == 2
    assert samples.steps == {1: [0, 1, 2, 3], 2: [4, 5, 6, 7], 3: [8, 9, 10, 11]}  # 2 x 2: the effective batch 4
    assert [r["step"] for r in progress(folder) if r.get("executed")] == [1, 2, 3]


def test_lightning_s_own_batch_search_keeps_the_plan_s_batch_and_runs_no_trial_steps(attempt, capsys):
    """It would shrink the batch without raising the accumulation, and its trials are optimizer steps."""
    from pytorch_lightning.tuner import Tuner
    folder = attempt(1, plan={"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2})
    model, data, samples = OneWeight(), Numbers(4), Samples()
    run = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     accelerator="cpu", devices=1, callbacks=[samples], max_steps=3)
    data.module = model
    assert Tuner(run).scale_batch_size(model, datamodule=data) == 2  # the script's search, before it trains
    run.fit(model, datamodule=data)
    assert samples.steps == {1: [0, 1, 2, 3], 2: [4, 5, 6, 7], 3: [8, 9, 10, 11]}
    assert [r["step"] for r in progress(folder) if r.get("executed")] == [1, 2, 3]
    assert "Lightning's batch size search is off; the batch stays 2" in capsys.readouterr().err


def test_a_program_without_a_batch_size_keeps_its_batch_and_says_so(attempt, capsys):
    folder = attempt(1)
    model = OneWeight()
    data = Numbers()
    data.train_dataloader = lambda: DataLoader(torch.arange(8), batch_size=4)
    fit(model, data, Samples(), max_steps=1)
    assert "per_device_train_batch_size" not in observed(folder)["plan"]
    assert "no `batch_size` on the module or the datamodule" in capsys.readouterr().err


def test_a_stop_saves_the_last_step_and_the_resumed_shuffled_epoch_trains_what_the_uninterrupted_one_does(attempt):
    """Stopped after step 3 of 8 (SIGTERM, between two steps), resumed on half the micro-batch with twice the
    accumulation: steps 4-8 train the samples that the uninterrupted training trains, in its order, the rest
    of the first epoch and all of the second."""
    torch.manual_seed(0)
    attempt(1)
    uninterrupted = Samples()
    fit(OneWeight(), Numbers(4, n=16, shuffle=True), uninterrupted, max_steps=8)

    torch.manual_seed(0)
    first = attempt(2)
    stopped = Samples(stop_after=3)
    with pytest.raises(SystemExit) as stop:
        fit(OneWeight(), Numbers(4, n=16, shuffle=True), stopped, max_steps=8)
    assert stop.value.code == 128 + signal.SIGTERM
    saved = json.loads((first / "emergency.0.json").read_text())
    assert saved["step"] == 3 and stopped.steps == {s: uninterrupted.steps[s] for s in (1, 2, 3)}

    torch.manual_seed(7)  # another process: its random states are not the first one's
    second = attempt(3, plan={"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2},
                     resume_from=saved["path"])
    resumed = Samples()
    model = OneWeight()
    fit(model, Numbers(4, n=16, shuffle=True), resumed, max_steps=8, accumulate_grad_batches=1)
    assert progress(second)[0]["began_at"] == 3
    assert resumed.steps == {s: uninterrupted.steps[s] for s in range(4, 9)}


def test_fewer_dataloader_workers_are_set_on_the_train_dataloader_before_it_is_iterated(attempt):
    folder = attempt(1, plan={"dataloader_num_workers": 0})
    model, data = OneWeight(), Numbers(4)
    data.train_dataloader = lambda: DataLoader(torch.arange(8), batch_size=data.batch_size, num_workers=2,
                                               persistent_workers=True)
    run = fit(model, data, Samples(), max_steps=2)
    assert observed(folder)["plan"]["dataloader_num_workers"] == 2
    assert run.train_dataloader.num_workers == 0


class WrapsLlama(pl.LightningModule):
    def __init__(self):
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM
        self.model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                                  num_hidden_layers=1, num_attention_heads=2))

    def training_step(self, batch, batch_idx):
        ids = (batch[:, None] + torch.arange(4)) % 32
        return self.model(input_ids=ids, labels=ids).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_a_transformers_model_in_the_module_is_reported_and_checkpointed_as_the_plan_says(attempt):
    folder = attempt(1, plan={"gradient_checkpointing": True})
    model = WrapsLlama()
    fit(model, Numbers(4), Samples(), max_steps=1)
    seen = observed(folder)
    assert seen["plan"]["gradient_checkpointing"] is False  # the program's own
    layers = [m for m in model.model.modules() if hasattr(m, "_gradient_checkpointing_func")]
    assert model.model.is_activation_checkpointing and layers
    assert all(m._gradient_checkpointing_func.keywords["use_reentrant"] is False for m in layers)  # as for the Trainer
    assert seen["model"]["shape"]["layers"] == 1 and seen["model"]["shape"]["vocab"] == 32  # for the estimator
    assert seen["facts"] == {**seen["facts"], "base_frozen": False, "trainable_fraction": 1.0, "device": "cpu"}


def test_the_program_s_own_loggers_hear_which_attempt_this_is_and_why(attempt, tmp_path, monkeypatch):
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    attempt(2, plan={"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2})
    monkeypatch.setenv("OOMLADDER_ATTEMPT", "2")
    monkeypatch.setenv("OOMLADDER_RUNG", "halve_batch")
    monkeypatch.setenv("OOMLADDER_REASON", "half the activations")
    csv, board = CSVLogger(tmp_path / "csv"), TensorBoardLogger(tmp_path / "tb")
    model, data = OneWeight(), Numbers(4)
    run = pl.Trainer(logger=[csv, board], enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, accelerator="cpu", devices=1, max_steps=2)
    data.module = model
    run.fit(model, datamodule=data)
    rows = (tmp_path / "csv" / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header, first = rows[0].split(","), rows[1].split(",")
    logged = dict(zip(header, first))
    assert (logged["oomladder/attempt"], logged["oomladder/per_device_train_batch_size"],
            logged["oomladder/gradient_accumulation_steps"], logged["step"]) == ("2", "2", "2", "0")
    events = EventAccumulator(str(board.log_dir), size_guidance={"tensors": 0}).Reload()
    text, = events.Tensors("oomladder/rung/text_summary")
    assert text.tensor_proto.string_val[0].decode() == "attempt 2 from step 0: halve_batch: half the activations"
