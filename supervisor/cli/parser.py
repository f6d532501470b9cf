"""The command line's grammar: verbs, options and their one-line errors."""

from __future__ import annotations

import argparse
import re
from typing import NoReturn

from oomladder import __version__
from oomladder.cli import suggest
from oomladder.errors import UsageError
from oomladder.process.allocator import MODES

EXIT_CODES_HELP = """exit status:
  0    training finished (after recovering, or with nothing to recover from)
  2    bad input: a flag, size, ladder file, command or run directory; nothing was run
  3    the worker failed for a reason no memory setting fixes (a bug, an unexplained kill, a hang twice)
  4    out of memory and no rung of the ladder left
  5    a budget ran out (--max-attempts, --max-wall-time)
  130  interrupted by SIGINT (Ctrl-C): run the same command again to continue
  143  stopped by SIGTERM (a scheduler's pre-emption): run the same command again to continue
  129  stopped by SIGHUP (the terminal closed): run the same command again to continue
  74   the disk holding the run directory is full: free space, then run the same command again
  70   a bug in oomladder itself
"""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # `--memory-cap -1GiB`: a value that starts with a dash and a digit is a value (argparse takes only plain
        # negative numbers as such, and calls the rest a missing argument); its own check then says what is wrong.
        self._negative_number_matcher = re.compile(r"^-\d")

    def error(self, message: str) -> NoReturn:  # argparse's own two-line usage dump, as one line
        raise UsageError(f"{suggest.hinted(message)} (see '{self.prog} --help')")

    def parse_known_args(self, args=None, namespace=None):
        try:
            return super().parse_known_args(args, namespace)
        except UsageError:
            # A mistyped flag leaves argparse complaining of what it then missed (a required --model): name it.
            unknown = suggest.unknown_options(self, args or [])
            if unknown and self._subparsers is None:
                raise UsageError(suggest.unknown_message(self, unknown)) from None
            raise

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:  # a command's flag it does not know: said with that command's help
            verb = getattr(parsed, "verb", None)
            command = self._subparsers._group_actions[0].choices.get(verb, self) if self._subparsers else self
            raise UsageError(suggest.unknown_message(command, extras))
        return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="oomladder", description="Run a training command; on out-of-memory, walk a fallback "
                     "ladder (bf16, 8-bit, smaller batch with more accumulation, checkpointing, fewer workers) "
                     "and run it again, keeping the effective batch.", epilog=EXIT_CODES_HELP,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"oomladder {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="{run,resume,report,plan,demo,strategies}", parser_class=_Parser)

    run = sub.add_parser("run", help="run a training command under the supervisor",
                         usage="oomladder run [options] -- COMMAND ...", epilog=EXIT_CODES_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    _run_options(run)
    run.add_argument("command", nargs=argparse.REMAINDER, help="the training command, after --")

    resume = sub.add_parser("resume", help="continue a stopped run (even one whose supervisor was killed) on "
                            "the plan and from the checkpoint it reached", epilog=EXIT_CODES_HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    resume.add_argument("run_dir")
    resume.add_argument("--node-rank", type=_nonnegative_int, metavar="R", help="on several nodes: this node's "
                        "index (default: from Slurm or torchrun's environment, as for run)")
    resume.add_argument("--notify-config", metavar="FILE", help="the notification targets, as for run (default: the "
                        "file the run was given, and $OOMLADDER_NOTIFY)")
    _console_options(resume)

    report = sub.add_parser("report", help="show the fallback report of a run directory")
    report.add_argument("run_dir")
    report.add_argument("--format", choices=("table", "md", "json", "html"), default="table",
                        help="table: on the console (default); md, json, html: report.md, report.json or "
                        "report.html as the run wrote them")

    plan = sub.add_parser("plan", help="estimate the peak memory of each rung of the ladder and say which plan "
                          "fits first, before launching anything")
    plan.add_argument("--model", required=True, metavar="PATH", help="a model folder (its config.json) or a config "
                      "file; nothing is loaded or downloaded")
    plan.add_argument("--seq-len", required=True, type=_positive_int, metavar="N", help="tokens per sequence")
    plan.add_argument("--batch-size", type=_positive_int, default=8, metavar="N", help="per-device batch (default 8)")
    plan.add_argument("--grad-accum", type=_positive_int, default=1, metavar="N",
                      help="gradient accumulation steps (default 1)")
    plan.add_argument("--lora-rank", type=_positive_int, metavar="R", help="train LoRA adapters of rank R (default: "
                      "every weight trains)")
    plan.add_argument("--lora-targets", default="q_proj,v_proj", metavar="NAMES",
                      help="the projections LoRA adapts (default q_proj,v_proj, peft's default for Llama)")
    plan.add_argument("--memory-cap", metavar="SIZE", help="the device's size, e.g. 24GiB, as `run --memory-cap` "
                      "takes it (default: the CUDA device here)")
    plan.add_argument("--memory", dest="memory_cap", help=argparse.SUPPRESS)  # its name before 0.2: still taken
    plan.add_argument("--device", choices=("cuda", "cpu"), default=None,
                      help="what the estimate is for (default cuda; cpu counts the checkpoint file mapped while it "
                      "loads, and no CUDA workspace)")
    plan.add_argument("--trainer", choices=("transformers", "trl-sft"), default="transformers",
                      help="whose training step: transformers (the Trainer, or a loop of your own; the default) or "
                           "trl-sft (TRL's SFTTrainer, whose loss keeps logits-sized tensors for its metrics)")
    plan.add_argument("--ladder", help="a YAML ladder file (default: the ladder shipped with oomladder)")
    plan.add_argument("--set", dest="settings", action="append", default=[], metavar="SETTING=VALUE",
                      help="a starting plan setting, e.g. precision=bf16 (repeatable; default: what a Trainer does "
                           "by default, fp32 and the checkpoint's dtype)")
    plan.add_argument("--format", choices=("table", "json"), default="table")

    demo = sub.add_parser("demo", help="the ladder at work on a tiny Llama fine-tune, on the CPU")
    demo.add_argument("--run-dir", default=None, help="where to keep the demo's run (default: a new folder "
                      "under ./oomladder-runs)")
    demo.add_argument("--memory-cap", default=None, help="the emulated device size (default: the demo's own)")
    demo.add_argument("--cpu-cap", choices=MODES, help="how the cap is counted (default auto: see `oomladder run "
                      "--help`)")
    demo.add_argument("--in-place", action="store_true", help="meet the OOM inside the running process (a split "
                      "step), as `oomladder run` does by default, instead of showing the ladder's relaunch")
    _console_options(demo)

    sub.add_parser("strategies", help="list the strategies a ladder file can name")
    return parser


def _console_options(p: argparse.ArgumentParser) -> None:
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("-q", "--quiet", action="store_true", help="show oomladder's own lines alone, not the "
                       "program's output (it still goes to attempts/NNN/stdout.log and stderr.log)")
    shown.add_argument("-v", "--verbose", action="store_true", help="also show the arithmetic behind each "
                       "decision: the error's numbers, what the estimator computed, why rungs were passed over")


def _run_options(p: argparse.ArgumentParser) -> None:
    _console_options(p)
    p.add_argument("--ladder", help="a YAML ladder file (default: the ladder shipped with oomladder)")
    p.add_argument("--memory-cap", metavar="SIZE", help="emulate a device of SIZE (1200MiB, 16GiB, 1.5G): a CUDA "
                   "memory fraction on a GPU, a cap on what the worker allocates on the CPU")
    p.add_argument("--cpu-cap", choices=MODES, help="how --memory-cap is counted on a CPU: allocator (the bytes "
                   "malloc has handed out and the files mapped in, through a small C library built at first use: as "
                   "cheap as no cap), address-space (every freed block goes back to the kernel, which costs "
                   "1.2-1.6x), or auto (the default: allocator where it can be built and the program preloads "
                   "nothing of its own); also OOMLADDER_CPU_CAP in the environment")
    p.add_argument("--run-dir", metavar="DIR", help="where the journal, logs and report go (default: a new "
                   "folder under ./oomladder-runs); the same DIR again continues that run")
    p.add_argument("--max-attempts", type=_positive_int, default=10, metavar="N",
                   help="stop after N attempts in this invocation (default 10)")
    p.add_argument("--max-wall-time", metavar="DURATION", help="stop (gracefully) after DURATION in all, e.g. 8h")
    p.add_argument("--hang-timeout", metavar="DURATION", help="a worker with no progress and no output for DURATION "
                   "is stopped and retried once on the same plan, e.g. 30m")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="SETTING=VALUE",
                   help="a starting value for a plan setting, e.g. per_device_train_batch_size=16 (repeatable); "
                        "needed for {placeholders} in a command that is not a Hugging Face Trainer program")
    p.add_argument("--no-offload", action="store_true", help="weights that from_pretrained's device_map puts on "
                   "the CPU or disk count as out of memory: the ladder quantizes until the model fits the device")
    p.add_argument("--no-in-place", action="store_true", help="meet every out-of-memory error with a relaunch: no "
                   "in-place split of the step's micro-batch (also OOMLADDER_IN_PLACE=0 in the environment)")
    p.add_argument("--no-split-ahead", action="store_true", help="do not size each step before it runs: a step "
                   "runs whole until it runs out of memory (also OOMLADDER_SPLIT_AHEAD=0 in the environment)")
    p.add_argument("--notify-config", metavar="FILE", help="send a short message through Apprise when a fallback "
                   "is taken and when the run ends, to the targets of FILE in Apprise's configuration format (one URL "
                   "a line: slack://, discord://, tgram://, ntfy://, mailto://, json:// and more); also "
                   "$OOMLADDER_NOTIFY, separated by spaces or commas. Neither puts a URL in the process list")
    p.add_argument("--notify", action="append", default=[], metavar="URL",
                   help="a target URL on the command line (repeatable): works, but every user of the host can read "
                        "it in the process list; prefer --notify-config or $OOMLADDER_NOTIFY")
    nodes = p.add_argument_group("several nodes", "one oomladder per node, every one with the same shared --run-dir; "
                                 "the defaults come from srun (one task per node) or torchrun's PET_NNODES and "
                                 "PET_NODE_RANK")
    nodes.add_argument("--nnodes", type=_positive_int, metavar="N", help="how many nodes run this training")
    nodes.add_argument("--node-rank", type=_nonnegative_int, metavar="R", help="this node's index, 0 to N-1")
    nodes.add_argument("--node-timeout", metavar="DURATION", help="how long a node waits for the others at each "
                       "attempt's start and end (default 10m); above the longest time one node's ranks may run on "
                       "after another's ended (a final save, say)")


def _whole_number(minimum: int):
    """An argparse type: a whole number of at least `minimum`, with a one-line error otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"it must be {minimum} or more, not {value}")
        return value
    return parse


_positive_int = _whole_number(1)
_nonnegative_int = _whole_number(0)
