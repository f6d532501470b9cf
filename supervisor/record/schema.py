"""What the journal holds: its schema version and the type of each record, in one place.

Records are JSON objects `{"v": SCHEMA_VERSION, "type": ..., "ts": ..., **fields}`, appended in
order. A reader skips types it does not know, so a newer oomladder's journal still folds.
"""

from oomladder.status import AttemptOutcome, InPlaceOutcome, RunStatus

# 2: `in_place` records, and an attempt's plan follows the split they report (history.py). A version 1 journal
# has none, and folds as before; a reader that does not know the type skips it. 3: a progress record may hold
# `steps`, ranges of steps (a flood journaled at a bounded rate, run/intake.py); `launched` records.
SCHEMA_VERSION = 3

RUN_STARTED = "run_started"          # the command, ladder and options of one invocation
OBSERVED = "observed"                # the program's own settings and facts, as the worker reported them
ATTEMPT_STARTED = "attempt_started"  # the plan, command and checkpoint an attempt starts from
LAUNCHED = "launched"                # its worker's pid (its session) and cgroup: what a later resume sweeps
PROGRESS = "progress"                # a step (or evaluation) a worker reported
IN_PLACE = "in_place"                # an OOM the worker met without a relaunch (a split step), or why it did not
INTERRUPT = "interrupt"              # the supervisor stopped the attempt: a signal, a budget, a hang, a peer
CHECKPOINT = "checkpoint"            # a whole emergency checkpoint the next attempt may resume from
NODE_ENDED = "node_ended"            # several nodes: how this node's group ended, its own evidence
ATTEMPT_ENDED = "attempt_ended"      # how the attempt ended (on several nodes, the world's end)
DECISION = "decision"                # what the ladder (or a retry) chose next, and why
WARNING = "warning"                  # something a person should know that changes nothing
RUN_ENDED = "run_ended"              # the run's status, exit code and reason

# The values a reader knows for these fields (oomladder/status.py): a record with another is named as damaged, not
# shown as a status nobody wrote.
RUN_STATUSES = tuple(s.value for s in RunStatus if s.ended)
ATTEMPT_OUTCOMES = tuple(o.value for o in AttemptOutcome if o.ended)
IN_PLACE_OUTCOMES = tuple(o.value for o in InPlaceOutcome)
