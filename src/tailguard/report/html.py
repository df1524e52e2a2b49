"""Write a ``Page`` as one static, self-contained HTML file: the only module that writes HTML.

Everything is inline (styles, figures as base64 PNG, one short script), so the
file can be mailed, archived or opened offline. The script only records on
``<body data-images-loaded="k/n">`` how many of the page's images decoded, which
lets a headless browser confirm that the figures show.
"""

from __future__ import annotations

import base64
import json
import re
from html import escape
from pathlib import Path
from typing import Any

from ..result import _encode
from .page import Block, Figure, Heading, Page, Paragraph, Table

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; color: #1b1f24; max-width: 1100px; margin: 2em auto;
       padding: 0 1.2em; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { font-size: 1.2em; margin-top: 1.8em; }
.headline { font-size: 1.15em; font-weight: 600; }
.warnings { border: 2px solid #c62828; background: #fff4f4; padding: .6em 1.2em; border-radius: 6px; }
.warnings h2 { color: #b71c1c; margin-top: .3em; } .warnings li { margin: .3em 0; }
.clean { border: 1px solid #2e7d32; background: #f3fbf3; padding: .5em 1.2em; border-radius: 6px; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #d0d7de; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.good td { color: #1b5e20; } tr.warn td { background: #fff8e1; } tr.bad td { background: #ffebee;
  color: #b71c1c; font-weight: 600; } tr.dim td:first-child { color: #57606a; }
table.pairs td:first-child { white-space: pre; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { font-weight: 600; margin-bottom: .3em; }
pre { background: #f6f8fa; padding: .5em; overflow-x: auto; font-size: .85em; margin: 0; }
pre.wrap { white-space: pre-wrap; word-break: break-word; }
footer { margin-top: 2.5em; color: #57606a; font-size: .85em; }
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var decoded = images.filter(function (img) { return img.complete && img.naturalWidth > 0; });
  document.body.setAttribute("data-images-loaded", decoded.length + "/" + images.length);
});
"""


_NUMBER = re.compile(r"^[-+]?[\d,]*\.?\d+( ?%)?$")


def _cell(text: str) -> str:
    """A table cell; plain numbers are right-aligned."""
    return f'<td class="num">{escape(text)}</td>' if _NUMBER.match(text) else f"<td>{escape(text)}</td>"


def _table(table: Table) -> str:
    """A data table (with a header: numbers right-aligned) or a table of labelled rows (without)."""
    if any(table.header):
        head = "".join(f"<th>{escape(h)}</th>" for h in table.header)
        lines, cell = [f"<table><thead><tr>{head}</tr></thead><tbody>"], _cell
    else:
        lines, cell = ['<table class="pairs"><tbody>'], lambda text: f"<td>{escape(text)}</td>"
    for i, row in enumerate(table.rows):
        tone = table.tones[i] if i < len(table.tones) else ""
        lines.append(f'<tr class="{tone}">' + "".join(cell(c) for c in row) + "</tr>")
    return "\n".join(lines) + "</tbody></table>"


def _figure(fig: Figure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (f"<figure><figcaption>{escape(fig.title)}</figcaption>"
            f'<img src="data:image/png;base64,{data}" alt="{escape(fig.alt)}"></figure>')


def _block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h2>{escape(block.text)}</h2>"
    if isinstance(block, Paragraph):
        return f"<pre>{escape(block.text)}</pre>" if block.preformatted else f"<p>{escape(block.text)}</p>"
    if isinstance(block, Table):
        return _table(block)
    return _figure(block)


def _value(value: Any) -> str:
    if isinstance(value, dict | list | tuple):
        return f'<pre class="wrap">{escape(json.dumps(_encode(value)))}</pre>'
    return escape("-" if value is None else str(value))


def _pairs(title: str, pairs: dict[str, Any]) -> str:
    if not pairs:
        return ""
    rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{_value(v)}</td></tr>" for k, v in pairs.items())
    return f"<section><h2>{escape(title)}</h2><table><tbody>{rows}</tbody></table></section>"


def _warnings(warnings: list[str]) -> str:
    if not warnings:
        return '<section class="clean">No warnings: every check this run made passed.</section>'
    items = "".join(f"<li>{escape(w)}</li>" for w in warnings)
    return f'<section class="warnings"><h2>Warnings ({len(warnings)})</h2><ul>{items}</ul></section>'


def to_html(page: Page) -> str:
    """The page as a complete HTML document."""
    from .. import __version__

    sources = ", ".join(page.sources) or "this run"
    body = [
        f"<header><h1>{escape(page.title)}</h1>",
        f'<p class="headline">{escape(page.headline)}</p></header>',
        _warnings(list(page.warnings)),
        "<main>", *map(_block, page.blocks), "</main>",
        _pairs("Settings", page.settings),
        _pairs("Versions and revision", page.provenance),
        f"<footer>tailguard {escape(__version__)} report ({escape(page.kind)}), rendered from "
        f"{escape(sources)}.</footer>",
    ]
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(page.title)}</title>",
        '<link rel="icon" href="data:,">',
        f"<style>{_STYLE}</style></head>",
        f'<body data-kind="{escape(page.kind)}">',
        *body,
        f"<script>{_SCRIPT}</script>",
        "</body></html>",
    ]) + "\n"


def write_html(page: Page, path: Path) -> Path:
    path.write_text(to_html(page), encoding="utf-8")
    return path
