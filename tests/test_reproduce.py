"""The report's command to run the final plan without oomladder: the program's command with the final plan's flags
where it reads them from its command line, the last attempt's unchanged (and said so) where it does not, never the
command that ran out of memory presented as the way to run the plan."""

import shlex

from oomladder.plan import Plan
from oomladder.views.reproduce import reproduce, rewrite

PROGRAM = Plan(per_device_train_batch_size=16, gradient_accumulation_steps=1, precision="fp32")
HALVED = PROGRAM.replace(per_device_train_batch_size=8, gradient_accumulation_steps=2)
RUN_CLM = ["python", "run_clm.py", "--model_name_or_path", "M", "--per_device_train_batch_size", "16", "--do_train"]


def test_a_program_that_reads_its_flags_gets_them_rewritten_in_its_command():
    r = reproduce(PROGRAM, HALVED, RUN_CLM, RUN_CLM, reads_flags=True)
    assert shlex.split(r["command"]) == ["python", "run_clm.py", "--model_name_or_path", "M",
                                         "--per_device_train_batch_size", "8", "--do_train",
                                         "--gradient_accumulation_steps", "2"]
    assert r["command_rewritten"] and r["command_note"].startswith("The program's command with the final plan's flags")


def test_flags_given_with_dashes_or_an_equals_sign_are_rewritten_where_they_stand():
    command = ["train", "--per-device-train-batch-size=16", "--bf16", "--gradient_accumulation_steps", "1", "--x"]
    wanted = [("--per_device_train_batch_size", "8"), ("--gradient_accumulation_steps", "2"), ("--bf16", "True")]
    assert rewrite(command, wanted) == ["train", "--per-device-train-batch-size=8", "--bf16=True",
                                        "--gradient_accumulation_steps", "2", "--x"]


def test_a_command_that_names_the_flags_is_rewritten_even_where_the_parser_was_not_seen():
    r = reproduce(PROGRAM, HALVED, RUN_CLM, RUN_CLM, reads_flags=None)
    assert "--per_device_train_batch_size 8" in r["command"] and r["command_rewritten"]


def test_a_program_that_does_not_read_flags_keeps_its_command_and_the_report_says_so():
    command = ["python", "train.py", "--config", "my.yaml"]
    r = reproduce(PROGRAM, HALVED, command, command, reads_flags=None)
    assert shlex.split(r["command"]) == command and not r["command_rewritten"]
    assert "does not read its TrainingArguments from its command line" in r["command_note"]
    assert r["training_arguments"] == {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2}


def test_settings_carried_by_placeholders_are_not_given_twice():
    original = ["train", "--bs", "{per_device_train_batch_size}", "--accum", "{gradient_accumulation_steps}"]
    last = ["train", "--bs", "8", "--accum", "2"]
    r = reproduce(PROGRAM, HALVED, last, original, reads_flags=True)
    assert shlex.split(r["command"]) == last and r["command_note"].startswith("The command of the last attempt, which")


def test_load_settings_are_named_as_not_flags_of_the_command():
    after = HALVED.replace(precision="bf16", load_dtype="bfloat16")
    r = reproduce(PROGRAM, after, RUN_CLM, RUN_CLM, reads_flags=True)
    assert "--bf16 True" in r["command"] and r["from_pretrained"] == {"dtype": "torch.bfloat16"}
    assert "from_pretrained(...) settings above are not flags of it" in r["command_note"]
