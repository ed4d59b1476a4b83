"""`report.html`: one self-contained page with a run's figures and metrics."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
.lead { color: #555; margin-top: 0; }
.cards { display: flex; flex-wrap: wrap; gap: 1rem; margin: 1.2rem 0; }
.card { border: 1px solid #ddd; border-radius: 8px; padding: .6rem 1rem; min-width: 9rem; }
.card b { display: block; font-size: 1.5rem; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { padding: .25rem .8rem; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; height: auto; border: 1px solid #eee; border-radius: 4px; }
code { background: #f4f4f4; padding: .1rem .3rem; border-radius: 3px; }
"""


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def render(metadata: dict[str, Any], directory: Path, figures: dict[str, str]) -> str:
    """The report page for the run in `directory`, its PNG figures embedded."""
    test = metadata["metrics"]["test"]
    validation = metadata["metrics"].get("validation", {})
    config = metadata["config"]
    rows = "\n".join(
        f"<tr><td>{html.escape(c['class'])}</td><td>{c['precision']:.3f}</td>"
        f"<td>{c['recall']:.3f}</td><td>{c['f1']:.3f}</td><td>{c['support']}</td></tr>"
        for c in test["per_class"]
    )
    settings = "\n".join(
        f"<tr><td>{html.escape(str(key))}</td><td><code>{html.escape(str(value))}</code></td></tr>"
        for key, value in config.items()
    )
    cards = [
        ("test accuracy", f"{test['accuracy']:.2%}"),
        ("test loss", f"{test['loss']:.4f}"),
        ("validation accuracy", f"{validation['accuracy']:.2%}" if validation else "n/a"),
        ("macro F1", f"{test['macro_f1']:.3f}"),
        ("training time", f"{metadata['timings']['fit_seconds']:.1f} s"),
    ]
    card_html = "".join(f'<div class="card">{name}<b>{value}</b></div>' for name, value in cards)
    titles = {
        "curves": "Learning curves",
        "confusion_matrix": "Confusion matrix",
        "predictions": "Predictions on test images",
    }
    figure_html = "\n".join(
        f"<h2>{titles[key]}</h2>\n{_image(directory / name, titles[key])}"
        for key, name in figures.items()
    )
    # Written while the folder still has its in-progress name; the page names the finished run.
    title = f"fmnist run {html.escape(directory.name.removesuffix('.partial'))}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{STYLE}</style></head>
<body>
<h1>{title}</h1>
<p class="lead">Model <code>{html.escape(config['model'])}</code> on the
{html.escape(metadata['backend'])} backend, seed {config['seed']}, trained
{html.escape(metadata['created'])}; test accuracy on {test['images']} test images, measured once after training.</p>
<div class="cards">{card_html}</div>
{figure_html}
<h2>Per-class metrics (test set)</h2>
<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>images</th></tr>
{rows}
</table>
<h2>Settings</h2>
<table>{settings}</table>
</body></html>
"""
