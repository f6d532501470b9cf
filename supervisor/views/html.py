"""report.html: the report as one page a person opens in the morning, on a laptop, after `scp`.

Everything report.md says (the attempts, why each rung was taken, the final plan, how to run it
without oomladder) and two charts (charts.py) drawn inline as SVG. The page is one file with
nothing to fetch: no script, no font, no stylesheet, no image from anywhere. Its strings come from
workers and users (exception messages, commands, ladder files), so every one is escaped, and the
page's Content-Security-Policy forbids scripts anyway, should an escape ever be missed.

A pure function of build_report's data, like render_markdown: `oomladder report DIR --format html`
prints what the run wrote.
"""

from __future__ import annotations

import html
import shlex
from typing import Any

from oomladder.cost import slowdown_cell
from oomladder.status import AttemptOutcome, RunStatus
from oomladder.units import format_size
from oomladder.views import charts, plots
from oomladder.views.table import format_duration
from oomladder.views.words import journal_damage, measure_words, split_ahead_line, why_taken

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1c2126; margin: 0;
       background: #f6f7f8; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 8px; } h2 { font-size: 19px; margin: 32px 0 10px; }
.status { font-size: 18px; font-weight: 600; margin: 6px 0; }
.status.finished { color: #1e7d3a; } .status.stopped { color: #b3261e; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 16px 0; }
dl.facts dt { color: #5b6570; } dl.facts dd { margin: 0; }
code, pre { font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: #f1f3f5; padding: 10px 12px; overflow-x: auto; white-space: pre-wrap; word-break: break-all; }
table { border-collapse: collapse; width: 100%; margin: 8px 0; }
th, td { text-align: left; vertical-align: top; padding: 6px 10px; border-bottom: 1px solid #e3e6e9; }
th { background: #f1f3f5; font-weight: 600; } td.num { text-align: right; white-space: nowrap; }
tr.oom td.status { color: #a15c00; font-weight: 600; } tr.error td.status { color: #b3261e; font-weight: 600; }
tr.finished td.status { color: #1e7d3a; font-weight: 600; }
figure { margin: 16px 0 24px; } figure svg { width: 100%; max-width: 960px; height: auto; display: block; }
figcaption { color: #5b6570; font-size: 13px; margin-top: 4px; }
.note { color: #5b6570; } .died { color: #5b6570; font-size: 14px; }
footer { margin-top: 40px; color: #8a939c; font-size: 13px; }
"""


def e(value: Any) -> str:
    """Any value as inert HTML text."""
    return html.escape("" if value is None else str(value), quote=True)


def render_html(report: dict[str, Any]) -> str:
    status = report["status"]
    look = "finished" if status == RunStatus.FINISHED else "stopped"
    body = ["<h1>oomladder report</h1>", f'<p class="status {look}">{e(report["status_text"])}</p>']
    if report.get("reason"):
        body.append(f"<p>{e(report['reason'])}</p>")
    body += [_facts(report), _warnings(report), _charts(report), _attempts(report), _why(report),
             _final_plan(report),
             '<footer>Written by oomladder from the run\'s journal (journal.jsonl). The same data: report.json; '
             'the same words: report.md.</footer>']
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>oomladder report: {e(report['status_text'])}</title>\n<style>{STYLE}</style>\n</head>\n"
            "<body>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n")


def _facts(report: dict[str, Any]) -> str:
    eb, lost = report["effective_batch"], report["time_lost"]
    rows = [("command", f"<code>{e(shlex.join(report['command']))}</code>"),
            ("memory cap", e(format_size(report["memory_cap"]) if report["memory_cap"] else "none")),
            ("ladder", e(report["ladder"] or "-")),
            ("effective batch", e(f"{eb['before']} at the start, {eb['after']} at the end")),
            ("optimizer steps", e(report["steps_summary"])),
            *([("split ahead", e(line))] if (line := split_ahead_line(report.get("split_ahead"))) else []),
            ("time lost", e(f"{format_duration(lost['failures'])} to failures, "
                            f"{format_duration(lost['restarts'])} to restarts"))]
    if report.get("device_memory"):
        rows.insert(2, ("device memory", e(format_size(report["device_memory"]))))
    if report.get("trains_in"):
        rows.insert(1, ("trained in", f"{e(report['trains_in'])}, which the command started"))
    if report.get("notebook"):
        rows.insert(1, ("notebook", f"<code>{e(report['notebook'])}</code>"))
    return '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def _warnings(report: dict[str, Any]) -> str:
    """What the run noticed that did not stop it, and any damage the journal's reading stepped over."""
    items = [f"<li>{e(w['text'])}</li>" for w in report.get("warnings") or []]
    if (damage := journal_damage(report.get("journal") or {})) is not None:
        items.insert(0, f"<li><strong>The journal is damaged</strong>: {e(damage)}. The report shows what the rest "
                        "holds.</li>")
    if not items:
        return ""
    return '<section id="warnings">\n<h2>Warnings</h2>\n<ul>\n' + "\n".join(items) + "\n</ul>\n</section>"


def _charts(report: dict[str, Any]) -> str:
    if not report["attempts"]:
        return ""
    memory = charts.memory_chart(report)
    measure = next((a["peak_measure"] for a in report["attempts"] if a["peak_measure"]), None)
    memory_caption = ("Each attempt's peak memory at the end of each optimizer step, against "
                      f"{'the ' + memory.limit_label if memory.limit else 'no cap'}. An ✕ marks an out-of-memory "
                      "error: the dotted line runs from the peak before the failed allocation to what it tried to "
                      "reach." + (f" The peak measured is {measure_words(measure)}." if measure else ""))
    timeline_caption = ("Each attempt on the wall clock: grey while it started (launch, model load, resume), blue "
                        "while it trained, with a tick where each step ended; hatched red from its last whole step "
                        "to its death, the time the failure cost.")
    return ("<section id=\"charts\">\n<h2>Charts</h2>\n"
            + _figure("memory-chart", lambda: plots.memory_svg(memory), memory_caption)
            + _figure("timeline-chart", lambda: plots.timeline_svg(charts.timeline_chart(report)), timeline_caption)
            + "</section>")


def _figure(id_: str, draw, caption: str) -> str:
    """A chart, or one line saying why there is none: a chart must never cost the run its report."""
    try:
        svg = draw()
    except plots.ChartsUnavailable as exc:
        svg = f'<p class="note">{e(exc)}</p>'
    except Exception as exc:  # noqa: BLE001 -- the report.json and report.md beside it still hold everything
        svg = f'<p class="note">This chart could not be drawn: {e(type(exc).__name__)}: {e(exc)}</p>'
    return f'<figure id="{id_}">\n{svg}\n<figcaption>{e(caption)}</figcaption>\n</figure>\n'


def _attempts(report: dict[str, Any]) -> str:
    rows = []
    for a in report["attempts"]:
        failure = a["failure"]
        kind = ("finished" if a["status"] == AttemptOutcome.FINISHED else "oom" if failure and failure.get("memory")
                else "error" if failure else str(a["status"]))
        changes = "<br>".join(e(part) for part in str(a["changes"]).split(", "))
        rows.append(f'<tr id="attempt-{int(a["number"])}" class="attempt {e(kind)}">'
                    f'<td class="num">{int(a["number"])}</td><td>{e(a["rung"])}</td><td>{changes}</td>'
                    f'<td class="status">{e(a["status_text"])}</td><td class="num">{e(a["steps_text"])}</td>'
                    f'<td class="num">{e(format_size(a["peak"]))}</td>'
                    f'<td class="num">{e(format_duration(a["duration"]))}</td></tr>')
        for row in a.get("in_place") or ():
            rows.append(f'<tr class="in-place"><td class="num"></td><td>{e(row["rung"])}</td>'
                        f'<td>{"<br>".join(e(x) for x in str(row["changes"]).splitlines())}</td>'
                        f'<td class="status">{e(row["status_text"])}</td><td class="num">-</td>'
                        f'<td class="num">{e(format_size(row["peak"]))}</td>'
                        f'<td class="num">{e(format_duration(row["seconds"]))}</td></tr>')
    return ("<section id=\"attempts\">\n<h2>Attempts</h2>\n<table>\n<thead><tr><th>#</th><th>rung</th>"
            "<th>what changed</th><th>status</th><th>steps run</th><th>peak</th><th>time</th></tr></thead>\n"
            "<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>\n</section>")


def _why(report: dict[str, Any]) -> str:
    items = []
    for a in report["attempts"]:
        line, in_place, died = why_taken(a, e, lambda text: f"<strong>{text}</strong>")
        text = line + "".join(f'<br><span class="in-place">{row}</span>' for row in in_place)
        text += f'<br><span class="died">{died}</span>' if died else ""
        items.append(f"<li>{text}</li>")
    return "<section id=\"why\">\n<h2>Why each rung was taken</h2>\n<ul>\n" + "\n".join(items) + "\n</ul>\n</section>"


def _final_plan(report: dict[str, Any]) -> str:
    if not report["before_after"]:
        return ('<section id="final-plan">\n<h2>Final plan</h2>\n<p>The program ran on its own settings: '
                'there is nothing to change.</p>\n</section>')
    rows = "\n".join(f"<tr><td>{e(r['setting'])}</td><td>{e(r['before'])}</td><td><strong>{e(r['after'])}"
                     f"</strong></td></tr>" for r in report["before_after"])
    cost = report.get("expected_slowdown")
    if cost:
        rows += (f"\n<tr><td>expected time per step</td><td>the program's own</td><td><strong>"
                 f"{e(slowdown_cell(cost))}</strong></td></tr>")
    said = (f"\n<p>Expected cost of the final plan: {e(cost['text'])}. These are rules of thumb for a busy GPU, not "
            f"measured in this run.</p>" if cost else "")
    out = ["<section id=\"final-plan\">\n<h2>Final plan</h2>\n<table>\n<thead><tr><th>setting</th><th>before</th>"
           f"<th>after</th></tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>{said}\n</section>",
           "<section id=\"reproduce\">\n<h2>Run the final plan without oomladder</h2>"]
    r = report["reproduce"]
    if r["training_arguments"]:
        body = ", ".join(f"{k}={v!r}" for k, v in r["training_arguments"].items())
        out += ["<p>In <code>TrainingArguments(...)</code>:</p>",
                f"<pre><code>TrainingArguments(..., {e(body)})</code></pre>",
                "<p>or, for a script that reads them from the command line (HfArgumentParser):</p>",
                f"<pre><code>{e(r['hf_argument_flags'])}</code></pre>"]
    if r["from_pretrained"]:
        body = ", ".join(f"{k}={v}" for k, v in r["from_pretrained"].items())
        out += ["<p>In <code>from_pretrained(...)</code>:</p>",
                f"<pre><code>from_pretrained(..., {e(body)})</code></pre>"]
    if r["command"]:
        out += [f"<p>{e(r.get('command_note') or 'The command of the last attempt')}:</p>",
                f"<pre><code>{e(r['command'])}</code></pre>"]
    return "\n".join(out) + "\n</section>"
