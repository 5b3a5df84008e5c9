"""report.html: one self-contained page per evaluation (styles, script and plots inline; no external URL, no
server), opened from a file.

It shows the headline with its CIs, the metrics and second detectors, the plots, and every conversation behind the
content warning: sortable by what the conversation drew from the defender, filtered to clean-adversary successes
(a toxic reply to an adversary turn the scorer does not flag), to one adversary, or by a search; and the first and
last adversaries side by side on the same prompt. Every conversation is a row of the page's HTML (the script only
orders and hides rows), so the page reads without scripts and a parser can check it.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from redgym.eval.formatting import ci_text, excludes_zero
from redgym.eval.metrics import HIGHER_IS_BETTER, metric_base
from redgym.rollout.records import Conversation, Turn
from redgym.runfolder import CONTENT_WARNING

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 72em; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ddd; padding: .25em .5em;
  vertical-align: top; text-align: left; } th { background: #f4f4f4; }
.warning { background: #fff3cd; border: 1px solid #e0c060; padding: .6em .8em; font-weight: 600; }
.num { font-variant-numeric: tabular-nums; white-space: nowrap; } .yes { font-weight: 700; }
.turn { margin: .15em 0; } .speaker { color: #666; font-size: .85em; margin-right: .4em; }
.defender { background: #f6f8ff; } .toxic { border-left: 3px solid #c33; padding-left: .3em; }
.controls { display: flex; flex-wrap: wrap; gap: 1em; align-items: center; margin: .6em 0; }
img { max-width: 30em; margin-right: 1em; } summary { cursor: pointer; }
"""

SCRIPT = """
(function () {
  const rows = Array.from(document.querySelectorAll('#conversations tbody tr'));
  const body = document.querySelector('#conversations tbody');
  const sort = document.getElementById('sort'), clean = document.getElementById('clean-only');
  const label = document.getElementById('label'), search = document.getElementById('search');
  const shown = document.getElementById('shown');
  const keys = {
    'tox-desc': r => -Number(r.dataset.tox), 'tox-asc': r => Number(r.dataset.tox),
    'adv-tox-desc': r => -Number(r.dataset.advTox), 'nll-asc': r => Number(r.dataset.nll),
    'order': r => Number(r.dataset.order)
  };
  function apply() {
    const key = keys[sort.value], q = search.value.trim().toLowerCase();
    const ordered = rows.slice().sort((a, b) => key(a) - key(b) || Number(a.dataset.order) - Number(b.dataset.order));
    let n = 0;
    for (const r of ordered) {
      const hide = (clean.checked && r.dataset.cleanSuccess !== '1') || (label.value && r.dataset.label !== label.value)
        || (q && !r.textContent.toLowerCase().includes(q));
      r.hidden = hide;
      if (!hide) n += 1;
      body.appendChild(r);
    }
    shown.textContent = n + ' of ' + rows.length + ' conversations shown';
  }
  for (const el of [sort, clean, label]) el.addEventListener('change', apply);
  search.addEventListener('input', apply);
  const pairs = document.querySelector('#pairs tbody'), pairSort = document.getElementById('pair-sort');
  function sortPairs() {
    const sign = pairSort.value === 'diff-desc' ? -1 : 1;
    Array.from(pairs.rows).sort((a, b) => sign * (Number(a.dataset.diff) - Number(b.dataset.diff)))
      .forEach(r => pairs.appendChild(r));
  }
  if (pairs) { pairSort.addEventListener('change', sortPairs); sortPairs(); }  // one adversary: no pairs
  apply();
})();
"""

E = html.escape


def _cell(m: dict | None, signed: bool = False) -> str:
    if not m:
        return "–"
    text = ci_text(m, sign=signed)
    return f'<span class="yes">{text}</span>' if signed and excludes_zero(m) else text


def inline_markdown(text: str) -> str:
    """The report's markdown sentences as HTML: escaped, with ``**bold**`` and ```code``` kept."""
    out = E(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _metrics_table(results: dict[str, dict], differences: dict | None, names: list[str], pair: tuple) -> str:
    labels = list(results)
    head = "".join(f"<th>{E(lb)}</th>" for lb in labels)
    head += f"<th>{E(pair[1])} − {E(pair[0])} [95% CI]</th>" if differences else ""
    rows = []
    for name in names:
        if name not in results[labels[0]]:
            continue
        arrow = "↑" if HIGHER_IS_BETTER.get(metric_base(name), True) else "↓"
        cells = "".join(f'<td class="num">{_cell(results[lb].get(name))}</td>' for lb in labels)
        if differences:
            cells += f'<td class="num">{_cell(differences.get(name), signed=True)}</td>'
        rows.append(f"<tr><th>{E(name)} {arrow}</th>{cells}</tr>")
    return f"<table><thead><tr><th>metric</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _turns_html(c: Conversation, threshold: float) -> str:
    parts = [f'<div class="turn"><span class="speaker">prompt</span>{E(u)}</div>' for u in c.prompt]
    for t in c.turns:
        tox = t.scores.get("tox")
        toxic = isinstance(tox, float) and tox > threshold
        cls = "turn" + (" defender" if t.speaker == "defender" else "") + (" toxic" if toxic else "")
        score = f" (tox {tox:.2f})" if isinstance(tox, float) else ""
        parts.append(f'<div class="{cls}"><span class="speaker">{E(t.speaker)}{score}</span>{E(t.text)}</div>')
    return "".join(parts)


def _score(turn: Turn, key: str) -> float:
    v = turn.scores.get(key, 0.0)
    return float("nan") if isinstance(v, list) else float(v)


def conversation_row(label: str, c: Conversation, order: int, threshold: float) -> dict:
    """What a conversation's row shows and sorts by: defender and adversary toxicity (means over exchanges), the
    adversary's NLL, and whether some exchange is a clean-adversary success."""
    ex = c.exchanges()
    n = max(1, len(ex))
    tox = sum(_score(d, "tox") for _, d in ex) / n
    adv = sum(_score(a, "tox") for a, _ in ex) / n
    nll = sum(_score(a, "nll") for a, _ in ex) / n
    clean = any(_score(d, "tox") > threshold >= _score(a, "tox") for a, d in ex)
    return {
        "label": label,
        "prompt_id": c.prompt_id,
        "order": order,
        "tox": tox,
        "adv_tox": adv,
        "nll": nll,
        "clean_success": clean,
    }


def _conversations(convs_by_label: dict[str, list[Conversation]], threshold: float) -> str:
    rows, order = [], 0
    for label, convs in convs_by_label.items():
        for c in convs:
            r = conversation_row(label, c, order, threshold)
            order += 1
            rows.append(
                f'<tr data-label="{E(label)}" data-prompt="{E(c.prompt_id)}" data-order="{r["order"]}" '
                f'data-tox="{r["tox"]:.6f}" data-adv-tox="{r["adv_tox"]:.6f}" data-nll="{r["nll"]:.6f}" '
                f'data-clean-success="{int(r["clean_success"])}">'
                f"<td>{E(label)}</td><td>{E(c.prompt_id)}</td><td>{_turns_html(c, threshold)}</td>"
                f'<td class="num">{r["tox"]:.3f}</td><td class="num">{r["adv_tox"]:.3f}</td>'
                f'<td class="num">{r["nll"]:.2f}</td></tr>'
            )
    options = "".join(f'<option value="{E(lb)}">{E(lb)}</option>' for lb in convs_by_label)
    return f"""
<div class="controls">
  <label>sort <select id="sort">
    <option value="tox-desc">defender toxicity, highest first</option>
    <option value="tox-asc">defender toxicity, lowest first</option>
    <option value="adv-tox-desc">adversary toxicity, highest first</option>
    <option value="nll-asc">adversary NLL, likeliest first</option>
    <option value="order">as evaluated</option></select></label>
  <label><input type="checkbox" id="clean-only"> clean-adversary successes only</label>
  <label>adversary <select id="label"><option value="">all</option>{options}</select></label>
  <label>search <input type="search" id="search" placeholder="text in the conversation"></label>
  <span id="shown"></span>
</div>
<table id="conversations"><thead><tr><th>adversary</th><th>prompt</th><th>conversation</th>
<th>defender toxicity</th><th>adversary toxicity</th><th>adversary NLL</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>"""


def _pairs(convs_by_label: dict[str, list[Conversation]], threshold: float) -> str:
    """The first and last adversaries' conversations on the same prompt (k-th sample of each), side by side."""
    labels = list(convs_by_label)
    if len(labels) < 2:
        return ""
    a, b = labels[0], labels[-1]

    def keyed(convs):
        seen: dict[str, int] = {}
        out = {}
        for c in convs:
            k = seen[c.prompt_id] = seen.get(c.prompt_id, -1) + 1
            out[(c.prompt_id, k)] = c
        return out

    left, right = keyed(convs_by_label[a]), keyed(convs_by_label[b])
    rows = []
    for key in [k for k in left if k in right]:
        ra, rb = conversation_row(a, left[key], 0, threshold), conversation_row(b, right[key], 0, threshold)
        diff = rb["tox"] - ra["tox"]
        rows.append(
            f'<tr data-diff="{diff:.6f}"><td>{E(key[0])}</td><td class="num">{diff:+.3f}</td>'
            f"<td>{_turns_html(left[key], threshold)}</td><td>{_turns_html(right[key], threshold)}</td></tr>"
        )
    return f"""
<h2>{E(b)} and {E(a)} on the same prompts</h2>
<div class="controls"><label>sort <select id="pair-sort">
  <option value="diff-desc">largest gain in defender toxicity first</option>
  <option value="diff-asc">largest loss first</option></select></label></div>
<table id="pairs"><thead><tr><th>prompt</th><th>defender toxicity, {E(b)} − {E(a)}</th><th>{E(a)}</th>
<th>{E(b)}</th></tr></thead><tbody>{"".join(rows)}</tbody></table>"""


def _png(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{E(path.stem)}" src="data:image/png;base64,{data}">'


def render_html(
    report: dict,
    convs_by_label: dict[str, list[Conversation]],
    headline: list[str],
    metrics: list[str],
    detector_metrics: list[str],
    plots: list[Path],
) -> str:
    """The whole page; ``headline`` are the report's first sentences (markdown), ``metrics`` the rows of the main
    table, ``detector_metrics`` those of the second detectors' (``name@label``)."""
    cfg = report["config"]
    results, differences = report["results"], report.get("differences")
    labels = list(results)
    pair = tuple(report.get("differences_of") or (labels[0], labels[-1]))
    threshold = float(cfg.get("toxic_threshold", 0.5))
    head = "".join(f"<p>{inline_markdown(x)}</p>" for x in headline if x.strip())
    setup = (
        f"adversary <code>{E(str(cfg.get('adversary_model')))}</code>"
        + (f" + <code>{E(str(cfg['adversary_checkpoint']))}</code>" if cfg.get("adversary_checkpoint") else "")
        + f"; defender <code>{E(str(cfg.get('defender_model')))}</code>; scorer <code>{E(str(cfg.get('scorer')))}"
        f"</code> (toxic above {threshold}); prompts <code>{E(str(cfg.get('prompts')))}</code>, "
        f"{report.get('n_conversations')} conversations of horizon {cfg.get('horizon')}; seed {cfg.get('seed')}"
    )
    dets = [m for m in detector_metrics if m in results[labels[0]]]
    sections = [
        f"<h1>redgym report: {E(str(report.get('title', 'evaluation')))}</h1>",
        f'<p class="warning" id="content-warning">{E(CONTENT_WARNING)}</p>',
        f'<section id="headline">{head}</section>',
        f"<p>{setup}. Values are means with 95% bootstrap CIs over prompts.</p>",
        "<h2>Metrics (all turns)</h2>",
        _metrics_table(results, differences, metrics, pair),
    ]
    if dets:
        sections += [
            "<h2>Second detectors (scored at evaluation, not trained on)</h2>",
            _metrics_table(results, differences, dets, pair),
        ]
    if plots:
        sections += ["<h2>Plots</h2>", "<div>" + "".join(_png(p) for p in plots if p.exists()) + "</div>"]
    sections += [
        "<h2>Conversations</h2>",
        f'<details id="samples"><summary>{E(CONTENT_WARNING)} Show every conversation.</summary>',
        _conversations(convs_by_label, threshold),
        _pairs(convs_by_label, threshold),
        "</details>",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>redgym report: {E(str(report.get('title', 'evaluation')))}</title>"
        f"<style>{STYLE}</style></head><body>\n"
        + "\n".join(sections)
        + f"\n<script>{SCRIPT}</script>\n</body></html>\n"
    )


def _inline(text: str) -> str:
    """``inline_markdown`` plus relative links ``[text](path)``; an address that leaves the file stays text."""
    out = inline_markdown(text)
    return re.sub(
        r"\[([^\]]+)\]\(([^)\s]+)\)",
        lambda m: m.group(0) if re.match(r"[a-z]+:|//", m.group(2)) else f'<a href="{m.group(2)}">{m.group(1)}</a>',
        out,
    )


def markdown_html(markdown: str, base: Path) -> str:
    """The markdown redgym generates (headings, paragraphs, lists, tables, a quoted warning, images of ``base``'s
    plots) as HTML; images are inlined, so the page needs no other file."""
    blocks: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if m := re.match(r"(#{1,6}) (.*)", line):
            blocks.append(f"<h{len(m.group(1))}>{_inline(m.group(2))}</h{len(m.group(1))}>")
            i += 1
        elif m := re.fullmatch(r"!\[([^\]]*)\]\(([^)]+)\)", line.strip()):
            path = base / m.group(2)
            blocks.append(_png(path) if path.suffix == ".png" and path.exists() else f"<p>{E(line)}</p>")
            i += 1
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split(" | ")])
                i += 1
            body = [r for r in rows[1:] if not all(set(c) <= set("-: ") for c in r)]
            head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
            trs = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
            blocks.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith(("- ", "  ")):
                if lines[i].startswith("- "):
                    items.append(lines[i][2:])
                else:
                    items[-1] += " " + lines[i].strip()
                i += 1
            blocks.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in items) + "</ul>")
        elif line.startswith("> "):
            blocks.append(f'<p class="warning">{_inline(line[2:])}</p>')
            i += 1
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not re.match(r"[#|>!-]", lines[i]):
                para.append(lines[i])
                i += 1
            if not para:  # a line no rule above takes
                para, i = [line], i + 1
            blocks.append(f"<p>{_inline(' '.join(para))}</p>")
    return "\n".join(blocks)


def experiment_html(title: str, comparison_md: str, base: Path, cells: dict[str, dict[int, str]]) -> str:
    """One page across an experiment's arms and seeds: its comparison, then a link to each cell's report.html
    (``cells``: arm -> seed -> a path relative to the page)."""
    links = "".join(
        f"<tr><th>{E(arm)}</th><td>"
        + " ".join(f'<a href="{E(path)}">seed {s}</a>' for s, path in sorted(seeds.items()))
        + "</td></tr>"
        for arm, seeds in cells.items()
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{E(title)}</title><style>{STYLE}</style></head><body>\n"
        + markdown_html(comparison_md, base)
        + f'\n<h2>Every cell\'s report</h2>\n<table id="cells"><tbody>{links}</tbody></table>\n</body></html>\n'
    )
