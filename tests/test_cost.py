"""A plan's expected cost against the program's own settings, from each rung's stated cost."""

from oomladder import strategies
from oomladder.cost import Cost, percent, slowdown
from oomladder.plan import Plan

PROGRAM = Plan(per_device_train_batch_size=16, gradient_accumulation_steps=1, precision="fp32",
               gradient_checkpointing=False, optim="adamw_torch", activation_offloading=False)
COSTS = [(name, strategies.get(name).cost) for name in strategies.available()]


def test_costs_compound_and_a_smaller_batch_costs_per_halving():
    after = PROGRAM.replace(per_device_train_batch_size=4, gradient_accumulation_steps=4, gradient_checkpointing=True)
    cost = slowdown(PROGRAM, after, COSTS)
    assert round(cost.share, 3) == round(1.33 * 1.1 ** 2 - 1, 3)
    assert any(part.startswith("halve_batch x2") for part in cost.parts)
    assert "+61 %" in cost.text()


def test_free_rungs_cost_nothing_and_offloading_says_it_depends():
    assert slowdown(PROGRAM, PROGRAM.replace(optim="adamw_bnb_8bit"), COSTS).share == 0
    assert slowdown(PROGRAM, PROGRAM, COSTS).text() == "about the same speed as the program's own settings"
    offload = slowdown(PROGRAM, PROGRAM.replace(activation_offloading=True), COSTS)
    assert offload.depends == ("activation_offloading",) and "bound by the host link" in offload.text()


def test_a_cost_goes_through_the_journal_and_back():
    cost = strategies.get("gradient_checkpointing").cost
    assert Cost.from_dict(cost.to_dict()) == cost and Cost.from_dict(None) is None
    assert (percent(0.33), percent(0.0), percent(None)) == ("+33 %", "~0 %", "depends")
