"""What a cell shows when its OOM needs more than an in-place split: the next plan as a table (setting, before,
after), the lines of code that hold it, and the cell to run again from. Pure: data in, rich renderables out."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from oomladder.plan import Plan, changes
from oomladder.views.report import reproduce

LOAD_FIELDS = ("load_dtype", "quantization")  # applied when the model loads: its cell runs again


def next_plan(before: Plan, after: Plan, why: str, rung: str, resume_step: int | None) -> Group:
    table = Table(title=f"oomladder: {why}; next plan: {rung}", title_justify="left")
    for column in ("setting", "before", "after"):
        table.add_column(column)
    for name, old, new in changes(before, after):
        table.add_row(name, _show(old), _show(new))
    lines = code_lines(before, after)
    again = ("the cell that loads the model" if any(name in LOAD_FIELDS for name, _, _ in changes(before, after))
             else "the cell that builds the TrainingArguments")
    resume = (f" The next trainer.train() resumes after step {resume_step}, where the OOM stopped it."
              if resume_step else "")
    told = Text(f"Run the notebook again from {again}: oomladder applies this plan as those cells run.{resume} To keep "
                f"the plan in the notebook, change these lines:")
    return Group(table, told, Text("\n".join(lines) or "(nothing: the plan changes only what oomladder sets)"))


def code_lines(before: Plan, after: Plan) -> list[str]:
    """The notebook's own lines that hold `after`, as the report writes them (views/report.py `reproduce`)."""
    code = reproduce(before, after, [])
    lines = []
    if code["training_arguments"]:
        lines.append("TrainingArguments(..., " + ", ".join(f"{k}={v!r}" for k, v in code["training_arguments"].items())
                     + ")")
    if code["from_pretrained"]:
        lines.append("from_pretrained(..., " + ", ".join(f"{k}={v}" for k, v in code["from_pretrained"].items()) + ")")
    lines += [f"os.environ[{k!r}] = {v!r}  # before torch is imported" for k, v in code["environment"].items()]
    return lines


def _show(value) -> str:
    return "unset" if value is None else str(value)
