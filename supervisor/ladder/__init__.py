"""The ladder: rungs read from YAML (file.py), the pure step to the next plan (rungs.py), and the
climb over several steps that the loop and `oomladder plan` share (climb.py)."""

from oomladder.ladder.climb import PassOver, Step, climb
from oomladder.ladder.file import DEFAULT_LADDER, ladder_from_journal, load_ladder, parse_ladder
from oomladder.ladder.rungs import Decision, Ladder, Rung, next_plan

__all__ = ["DEFAULT_LADDER", "Decision", "Ladder", "PassOver", "Rung", "Step", "climb", "ladder_from_journal",
           "load_ladder", "next_plan", "parse_ladder"]
