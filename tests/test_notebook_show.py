"""What a notebook cell shows when its OOM needs a new plan (notebook/show.py): rendered on a capture console of
fixed width with colour off, and read as text."""

from rich.console import Console

from oomladder.notebook.show import code_lines, next_plan
from oomladder.plan import Plan

BEFORE = Plan(per_device_train_batch_size=16, gradient_accumulation_steps=1, precision="fp32", load_dtype="float32")


def shown(renderable) -> str:
    console = Console(width=120, record=True, color_system=None, force_terminal=False)
    console.print(renderable)
    return console.export_text()


def test_a_smaller_micro_batch_is_shown_setting_by_setting_with_the_training_arguments_that_hold_it():
    after = BEFORE.replace(per_device_train_batch_size=8, gradient_accumulation_steps=2)
    text = shown(next_plan(BEFORE, after, "CPU allocator out of memory", "halve_batch", resume_step=2))
    assert "│ per_device_train_batch_size │ 16     │ 8     │" in text
    assert "│ gradient_accumulation_steps │ 1      │ 2     │" in text
    assert "from the cell that builds the TrainingArguments" in text and "resumes after step 2" in text
    assert "TrainingArguments(..., per_device_train_batch_size=8, gradient_accumulation_steps=2)" in text


def test_a_plan_that_changes_how_the_model_loads_sends_the_person_back_to_the_loading_cell():
    after = BEFORE.replace(precision="bf16", load_dtype="bfloat16", quantization="int8")
    text = shown(next_plan(BEFORE, after, "CUDA out of memory", "bf16 + int8", resume_step=None))
    assert "from the cell that loads the model" in text and "resumes" not in text
    assert code_lines(BEFORE, after) == [
        "TrainingArguments(..., bf16=True, fp16=False)",
        "from_pretrained(..., dtype=torch.bfloat16, quantization_config=BitsAndBytesConfig(load_in_8bit=True))"]
