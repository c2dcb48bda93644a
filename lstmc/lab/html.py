"""The report as one self-contained HTML page: the summary table, each figure embedded as a
PNG data URI (no file beside it is needed, no script, no network), the experiment's
definition and the failed trials with their messages."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from .experiment import Experiment
from .summary import COLUMNS, TrialRecord

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 62em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
figure { margin: 1.5em 0; } img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.note { color: #855; }
"""


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def render_html(experiment: Experiment, task, rows: list[dict], records: list[TrialRecord],
                figures: dict[str, str], directory: Path, importances: dict[str, float],
                notes: list[str]) -> str:
    esc = html.escape
    heads = ["variant", "trials", "failed", f"best {task.metric}", "q1", "median", "q3",
             "p (Welch)", "parameters", "s / epoch"]
    table = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in heads) + "</tr>"]
    for row in rows:
        table.append("<tr>" + "".join(f"<td>{_cell(row[c])}</td>" for c in COLUMNS) + "</tr>")
    table.append("</table>")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>lstmc experiment: {esc(experiment.task)}</title>",
        '<link rel="icon" href="data:,">',  # no favicon request: a clean console
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Variant lab: {esc(experiment.task)}</h1>",
        (f"<p>{esc(task.summary)}. Test <b>{esc(task.metric)}</b> "
         f"({'lower' if task.lower_is_better else 'higher'} is better) of "
         f"{sum(r['trials'] for r in rows)} completed trials; baseline "
         f"<b>{esc(experiment.baseline)}</b>; p: Welch's t-test against it.</p>"),
        "\n".join(table),
    ]
    for name, caption in figures.items():
        data = base64.b64encode((directory / name).read_bytes()).decode("ascii")
        parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption)}">'
                     f"<figcaption>{esc(caption)} ({esc(name)})</figcaption></figure>")
    if importances:
        parts.append("<h2>Hyperparameter importance (fANOVA)</h2><table>"
                     + "".join(f"<tr><td>{esc(k)}</td><td>{v:.3f}</td></tr>"
                               for k, v in importances.items()) + "</table>")
    for note in notes:
        parts.append(f'<p class="note">{esc(note)}</p>')
    failed = [r for r in records if r.state == "failed"]
    if failed:
        parts.append("<h2>Failed trials</h2><table><tr><th>trial</th><th>variant</th>"
                     "<th>message</th></tr>" + "".join(
                         f"<tr><td>{r.number}</td><td>{esc(r.variant)}</td>"
                         f'<td style="text-align:left">{esc(r.error)}</td></tr>'
                         for r in failed) + "</table>")
    definition = json.loads(experiment.to_json())
    for variant in definition["variants"]:
        variant.pop("text")
    parts.append("<h2>Experiment</h2><pre>" + esc(json.dumps(definition, indent=2))
                 + "</pre></body></html>")
    return "\n".join(parts)
