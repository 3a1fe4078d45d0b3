"""BudgetGuard: a run with a time budget re-plans its steps on measured step times, so the epochs
it gets follow the machine's real speed and not the start-up probe's reading. Driven with a fake
clock: through a real transformers Trainer on a tiny model, and step by step with real
TrainerState/TrainerControl objects and the Trainer's own cosine schedule."""

import io
import json
import math
from types import SimpleNamespace

import pytest

from engine.train import events
from engine.train.callbacks import (
    TIMED_STEPS,
    UNTIMED_STEPS,
    RunState,
    budget_guard,
    rescale_schedule,
    training_callbacks,
)
from engine.train.config import TrainConfig

DECIDES_AT = UNTIMED_STEPS + TIMED_STEPS


class Clock:
    """Monotonic seconds that move only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stream(monkeypatch):
    buffer = io.StringIO()
    monkeypatch.setattr(events, "EVENT_STREAM", buffer)
    return buffer


def emitted(buffer: io.StringIO, kind: str) -> list[dict]:
    found = [json.loads(line) for line in buffer.getvalue().splitlines()]
    return [e for e in found if e["event"] == kind]


def cosine(total: int, warmup: int = 2, lr: float = 1e-3):
    import torch
    from transformers import get_cosine_schedule_with_warmup

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    return get_cosine_schedule_with_warmup(optimizer, warmup, total)


class Run:
    """A guard fed the Trainer's callback sequence, one optimiser step at a time."""

    def __init__(self, tmp_path, *, budget_s: int, planned: int, per_epoch: int, scheduler=None,
                 info=None, global_step: int = 0):
        from transformers import TrainerControl, TrainerState
        from transformers.trainer_callback import DefaultFlowCallback

        self.clock = Clock()
        self.state = RunState(config=TrainConfig(time_budget_s=budget_s), auto_epochs=True,
                              info=dict(info or {"choices": {"epochs": {"value": 3,
                                                                         "reason": "planned"}}}))
        self.guard = budget_guard(tmp_path, self.state, clock=self.clock)
        self.trainer_state = TrainerState(max_steps=planned, global_step=global_step)
        self.control = TrainerControl()
        self.scheduler = cosine(planned) if scheduler is None else scheduler
        self.args = SimpleNamespace(gradient_accumulation_steps=1, logging_first_step=False,
                                    logging_strategy="no", eval_strategy="no",
                                    save_strategy="no")
        self.flow = DefaultFlowCallback()
        self.guard.on_train_begin(self.args, self.trainer_state, self.control,
                                  train_dataloader=range(per_epoch), lr_scheduler=self.scheduler)

    def step(self, seconds: float, *, then_evaluate_for: float = 0.0) -> None:
        self.guard.on_step_begin(self.args, self.trainer_state, self.control)
        self.clock.now += seconds
        if hasattr(self.scheduler, "step"):
            self.scheduler.optimizer.step()
            self.scheduler.step()
        self.trainer_state.global_step += 1
        # as the Trainer does: its DefaultFlowCallback first (it stops the run at max_steps)
        self.flow.on_step_end(self.args, self.trainer_state, self.control)
        self.guard.on_step_end(self.args, self.trainer_state, self.control,
                               lr_scheduler=self.scheduler)
        if then_evaluate_for:
            self.clock.now += then_evaluate_for
            self.guard.on_evaluate(self.args, self.trainer_state, self.control)

    def train(self, seconds: float) -> None:
        while not self.control.should_training_stop:
            self.step(seconds)


def test_the_guard_trims_the_run_and_its_schedule_to_the_budget(tmp_path, stream):
    # 10 s a step, 220 s budget: 200 s of steps (220 / 1.1) → 20 of the 60 planned
    run = Run(tmp_path, budget_s=220, planned=60, per_epoch=8)
    for _ in range(DECIDES_AT - 1):
        run.step(10)
    assert run.trainer_state.max_steps == 60  # not before it has timed TIMED_STEPS steps
    run.train(10)
    assert run.trainer_state.global_step == run.trainer_state.max_steps == 20
    # the schedule ends with the run: the learning rate after the last step is ~0, and the
    # last step trained at a small fraction of the peak (it was near the top before the trim)
    assert run.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)
    assert run.scheduler.lr_lambdas[0](19) < 0.01
    budget = run.state.info["budget"]
    assert (budget["planned_steps"], budget["steps"], budget["step_s"]) == (60, 20, 10)
    assert budget["rescaled"] and run.state.total_steps == 20
    epochs = run.state.info["choices"]["epochs"]
    assert epochs["value"] == 2.5 and epochs["reason"].startswith(
        "trimmed from 60 to 20 steps after measuring 10.00 s a step")
    assert epochs["reason"].endswith("; planned: planned")
    # run_info.json says so at once (a run resumed after a crash applies it again), and an event
    saved = json.loads((tmp_path / "run_info.json").read_text())
    assert saved["budget"]["steps"] == 20 and saved["choices"]["epochs"]["value"] == 2.5
    [event] = emitted(stream, "budget")
    assert (event["step"], event["planned_steps"], event["total_steps"]) == (DECIDES_AT, 60, 20)
    assert event["choices"]["epochs"] == epochs


def test_the_guard_counts_the_slow_first_steps_but_not_evaluations(tmp_path, stream):
    # two 40 s warm-up steps are spent time but not the pace; a 500 s evaluation is neither
    run = Run(tmp_path, budget_s=330, planned=100, per_epoch=8)
    run.step(40)
    run.step(40, then_evaluate_for=500)
    for _ in range(TIMED_STEPS):
        run.step(10)
    # 300 s of steps: 140 spent over 8 steps, 160 s left at 10 s a step → 8 + 16
    assert run.trainer_state.max_steps == 24


def test_the_guard_never_trims_below_one_epoch_nor_extends_the_run(tmp_path, stream):
    slow = Run(tmp_path, budget_s=22, planned=60, per_epoch=30)
    slow.train(10)
    assert slow.trainer_state.global_step == 30  # one epoch, over the budget (said so)
    assert "at least one epoch" in slow.state.info["budget"]["reason"]
    # a run already over its budget after an epoch's worth of steps takes one more and stops
    over = Run(tmp_path, budget_s=22, planned=60, per_epoch=4)
    over.train(10)
    assert over.trainer_state.global_step == DECIDES_AT + 1
    assert "(already over it)" in over.state.info["budget"]["reason"]
    fast = Run(tmp_path, budget_s=10_000, planned=40, per_epoch=8)
    fast.train(10)
    assert fast.trainer_state.global_step == 40 and "budget" not in fast.state.info
    assert len(emitted(stream, "budget")) == 2  # the slow and the over-budget run's


def test_an_unknown_schedule_still_stops_at_the_new_total_and_says_so(tmp_path, stream):
    run = Run(tmp_path, budget_s=220, planned=60, per_epoch=8, scheduler=SimpleNamespace())
    run.train(10)
    assert run.trainer_state.global_step == 20
    assert not run.state.info["budget"]["rescaled"]
    assert "schedule was not rescaled" in run.state.info["budget"]["reason"]
    assert rescale_schedule(None, 20) is False


def test_a_resumed_run_applies_the_recorded_total_again(tmp_path, stream):
    import torch

    # the schedule a resumed Trainer builds from its settings: the planned 60 steps, at step 12
    scheduler = cosine(60)
    for _ in range(12):
        scheduler.optimizer.step()
        scheduler.step()
    recorded = {"planned_steps": 60, "steps": 20, "step_s": 10.0, "rescaled": True, "reason": ""}
    run = Run(tmp_path, budget_s=220, planned=60, per_epoch=8, scheduler=scheduler,
              info={"budget": recorded, "choices": {}}, global_step=12)
    assert run.trainer_state.max_steps == 20
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-3 * cosine_factor(12, 2, 20))
    run.train(30)  # slower now: no second re-plan from a partial measurement
    assert run.trainer_state.global_step == 20 and emitted(stream, "budget") == []
    assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)


def cosine_factor(step: int, warmup: int, total: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def test_only_runs_with_auto_epochs_and_a_budget_get_the_guard(tmp_path):
    def names(config, auto_epochs=True):
        state = RunState(config=config, auto_epochs=auto_epochs)
        return [type(c).__name__ for c in training_callbacks(tmp_path, state)]

    assert names(TrainConfig())[0] == "BudgetGuard"
    assert "BudgetGuard" not in names(TrainConfig(), auto_epochs=False)  # epochs set
    assert "BudgetGuard" not in names(TrainConfig(time_budget_s=0))
    assert "BudgetGuard" not in names(TrainConfig(max_steps=10))
    assert names(TrainConfig(), auto_epochs=False)[1] == "LossWatchdog"


def test_a_real_trainer_stops_at_the_trimmed_total_with_its_schedule(tmp_path, stream):
    """A transformers Trainer on a tiny Llama: the guard's total holds in the real training loop
    (DefaultFlowCallback stops there and saves), and the schedule it rebuilt is the one that
    stepped."""
    import torch
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
    ))
    rows = [{"input_ids": list(range(i, i + 8)), "labels": list(range(i, i + 8))}
            for i in range(8)]
    clock = Clock()
    state = RunState(config=TrainConfig(time_budget_s=220), auto_epochs=True)
    guard = budget_guard(tmp_path, state, clock=clock)

    class TenSecondSteps(TrainerCallback):  # each step ends ten seconds after it began
        def on_step_end(self, args, trainer_state, control, **kwargs):
            clock.now += 10

    args = TrainingArguments(
        output_dir=str(tmp_path / "checkpoints"), num_train_epochs=5, per_device_train_batch_size=1,
        learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=2, logging_steps=1,
        save_strategy="steps", save_steps=1000, report_to="none", disable_tqdm=True,
        use_cpu=True, seed=0, dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows,
                      callbacks=[TenSecondSteps(), guard])
    trainer.train()
    # 8 steps an epoch × 5 planned = 40; each step ten seconds: 200 s of steps fit 20
    assert trainer.state.global_step == trainer.state.max_steps == 20
    assert state.info["budget"]["planned_steps"] == 40 and state.info["budget"]["rescaled"]
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)
    logged = [e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e]
    assert logged[-1] < 0.01 * max(logged)  # the last step trained near the schedule's end
    assert (tmp_path / "checkpoints" / "checkpoint-20").is_dir()  # the final save came
