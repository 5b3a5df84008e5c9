"""Write an evaluation's results: report.json, report.md, report.html (eval/html.py), samples.jsonl and PNG plots.

Several results (e.g. ``untuned`` and ``trained`` adversaries on the same prompts) can share one report; with
two, report.md shows them side by side with the ratio of each metric and the paired differences.
"""

from __future__ import annotations

import math
from pathlib import Path

from redgym.eval.formatting import ci_text, excludes_zero, num, verdict
from redgym.eval.html import render_html
from redgym.eval.markdown import table
from redgym.eval.metrics import Table, metric_detectors
from redgym.eval.plots import errorbar_turns, plt, save
from redgym.rollout.records import Conversation
from redgym.runfolder import CONTENT_WARNING, atomic_write, write_json, write_jsonl

HEADLINE = [
    "reward",
    "defender_toxicity",
    "defender_toxic_rate",
    "attack_success_rate",
    "stealth_success_rate",
    "defender_toxicity_clean_adversary",
    "combined_toxicity",
    "adversary_toxicity",
    "adversary_nll",
    "adversary_perplexity",
    "distinct_1",
    "distinct_2",
    "self_bleu",
    "embedding_diversity",
]


def headline_lines(h: dict, labels: tuple[str, str]) -> list[str]:
    """The report's first result, in words: the gain, whether its CI excludes 0, and how much of it is echo."""
    d = h["difference"]
    resolved = "its 95% CI excludes 0" if excludes_zero(d) else "its 95% CI includes 0: no effect resolved"
    lines = [
        f"**Headline.** Defender toxicity, {labels[1]} − {labels[0]} on the same prompts: {ci_text(d, sign=True)} "
        f"(×{num(h['ratio'])}); {resolved}.",
    ]
    if not math.isnan(h["echo_share"]):
        clean = h.get("clean_adversary_difference")
        lines[0] += (
            f" Echo: {h['echo_share']:.0%} of that change follows toxic adversary turns and {h['clean_share']:.0%} "
            f"clean ones (the adversary's own toxicity ×{num(h['adversary_toxicity_ratio'])}, its NLL "
            f"×{num(h['adversary_nll_ratio'])})"
            + (
                f"; after clean adversary turns the defender's toxicity moved {ci_text(clean, sign=True)}."
                if clean
                else "."
            )
        )
    for label, det in (h.get("detectors") or {}).items():
        r = det["defender_toxic_rate"]
        lines += [""]
        lines.append(
            f"Under the second detector `{label}` (not trained on): replies flagged {det['rates'][0]:.1%} → "
            f"{det['rates'][1]:.1%}, difference {ci_text(r, sign=True)} ({verdict(r)}); mean score "
            f"{ci_text(det['defender_toxicity'], sign=True)}; after clean adversary turns "
            f"{ci_text(det['clean_adversary_difference'], sign=True)}."
        )
    return lines + [""]


# Each second detector's metrics (``name@label``), in the order report.md lists them.
DETECTOR_METRICS = [
    "defender_toxicity",
    "defender_toxic_rate",
    "defender_toxicity_clean_adversary",
    "stealth_success_rate",
    "adversary_toxicity",
    "adversary_toxic_rate",
]


def detector_lines(results: dict[str, dict], differences: dict | None, pair: tuple[str, str]) -> list[str]:
    """report.md's section on the second detectors: each metric per label, and the paired difference."""
    labels = list(results)
    first = results[labels[0]]
    dets = metric_detectors(first)
    if not dets:
        return []
    diff = bool(differences)
    lines = [
        "",
        "## Second detectors (scored at evaluation, not trained on)",
        "",
        "A rate is the share of replies (or adversary turns) the detector scores above the threshold; clean: "
        "exchanges whose adversary turn it does not flag.",
        "",
    ]
    head = ["detector", "metric", *labels] + ([f"{pair[1]} − {pair[0]}"] if diff else [])
    rows = [
        [f"`{label}`", name, *(ci_text(results[lb][key]) for lb in labels)]
        + ([ci_text(differences[key])] if differences and key in differences else [])
        for label in dets
        for name in DETECTOR_METRICS
        if (key := f"{name}@{label}") in first
    ]
    return lines + table(head, rows)


def render_markdown(
    report: dict,
    results: dict[str, dict],
    differences: dict | None = None,
    samples: list[Conversation] | None = None,
    n_samples: int = 0,
) -> str:
    labels = list(results)
    cfg = report["config"]
    lines = [
        f"# redgym report: {report.get('title', 'evaluation')}",
        "",
        f"> **{CONTENT_WARNING}**",
        "",
        *(
            headline_lines(report["headline"], report.get("differences_of") or (labels[0], labels[-1]))
            if report.get("headline")
            else []
        ),
        f"- adversary: `{cfg['adversary_model']}`"
        + (f" + `{cfg['adversary_checkpoint']}`" if cfg.get("adversary_checkpoint") else "")
        + f" ({cfg['adversary_format']}); defender: `{cfg['defender_model']}` ({cfg['defender_format']})",
        f"- scorer: `{cfg['scorer']}` (toxic above {cfg['toxic_threshold']}); prompts: `{cfg['prompts']}`, "
        f"{report['n_conversations']} conversations of horizon {cfg['horizon']}; seed {cfg['seed']}",
        f"- redgym {report['redgym_version']} at {report['git_hash']}; values are means with 95% bootstrap "
        "CIs over prompts",
        "",
    ]

    def metric_row(name: str) -> list[str]:
        cells = [f"{name} {'↑' if results[labels[0]][name]['higher_is_better'] else '↓'}"]
        cells += [ci_text(results[lb][name]) for lb in labels]
        if len(labels) == 2:
            a, b = results[labels[0]][name]["value"], results[labels[1]][name]["value"]
            cells.append(num(b / a) if a else "n/a")
        return cells

    head = ["metric", *labels] + (["ratio"] if len(labels) == 2 else [])
    lines += ["## Metrics (all turns)", ""]
    lines += table(head, [metric_row(name) for name in HEADLINE if name in results[labels[0]]])
    if differences:
        first, last = report.get("differences_of") or (labels[0], labels[-1])
        lines += [
            "",
            f"## Paired differences ({last} − {first}, same prompts)",
            "",
        ]
        lines += table(
            ["metric", "difference [95% CI]", "CI excludes 0"],
            # second detectors (``@``) have their own section
            (
                [name, ci_text(m), "yes" if excludes_zero(m) else "no"]
                for name, m in differences.items()
                if "@" not in name
            ),
        )
    lines += detector_lines(results, differences, tuple(report.get("differences_of") or (labels[0], labels[-1])))
    if report.get("guard_effect"):
        g = report["guard"]
        lines += [
            "",
            f"## Guard effect (guarded − bare defender, same adversary turns; guard `{g['model']}` flagged "
            f"{g['turns_flagged']} of {g['turns_checked']} turns)",
            "",
        ]
        lines += table(
            ["adversary", "attack_success_rate [95% CI]", "defender_toxicity [95% CI]"],
            (
                [label, ci_text(d["attack_success_rate"]), ci_text(d["defender_toxicity"])]
                for label, d in report["guard_effect"].items()
            ),
        )
    h = cfg["horizon"]
    lines += [
        "",
        "## Per turn",
        "",
    ]
    lines += table(
        ["metric", "turn", *labels],
        (
            [name, str(k), *(ci_text(results[lb][key]) for lb in labels)]
            for name in ("defender_toxicity", "combined_toxicity", "adversary_toxicity", "adversary_nll", "distinct_2")
            for k in range(1, h + 1)
            if (key := f"{name}/turn_{k}") in results[labels[0]]
        ),
    )
    lines += [
        "",
        "## Plots",
        "",
        "![defender toxicity per turn](plots/toxicity_per_turn.png)",
        "",
        "![toxicity vs adversary NLL](plots/toxicity_vs_nll.png)",
        "",
    ]
    if samples and n_samples:
        lines += [f"## Samples (top {n_samples} by reward; all in samples.jsonl)", "", f"> {CONTENT_WARNING}", ""]
        best = sorted(samples, key=lambda c: -max(c.rewards))[:n_samples]
        for c in best:
            lines.append(f"- reward {max(c.rewards):.3f}")
            for t in c.turns:
                lines.append(
                    f"  - **{t.speaker}** (tox {t.scores.get('tox', float('nan')):.2f}): "
                    + t.text.replace("\n", " ").replace("|", "\\|")
                )
        lines.append("")
    lines += [
        "Files: `report.json` (all numbers, config, split), `samples.jsonl` (every conversation with all "
        "scores), `split.json`, `config.yaml`.",
        "",
    ]
    return "\n".join(lines)


def plot_toxicity_per_turn(path: Path, results: dict[str, dict], horizon: int) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    turns = list(range(1, horizon + 1))
    for i, (label, metrics) in enumerate(results.items()):
        ms = [metrics[f"defender_toxicity/turn_{k}"] for k in turns]
        vals = [m["value"] for m in ms]
        below, above = [v - m["ci95"][0] for v, m in zip(vals, ms)], [m["ci95"][1] - v for v, m in zip(vals, ms)]
        errorbar_turns(ax, turns, vals, below, above, label=label, i=i)
    ax.set_xlabel("turn")
    ax.set_ylabel("defender toxicity (mean, 95% CI)")
    ax.legend()
    save(fig, path)


def plot_toxicity_vs_nll(path: Path, convs_by_label: dict[str, list[Conversation]]) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, convs in convs_by_label.items():
        t = Table.from_conversations(convs)
        ax.scatter(t.nll.ravel(), t.tox_defender.ravel(), s=10, alpha=0.6, label=label)
    ax.set_xlabel("adversary NLL under the defender (nats/token)")
    ax.set_ylabel("defender toxicity")
    ax.legend()
    save(fig, path)


def write_report(
    out: Path,
    report: dict,
    convs_by_label: dict[str, list[Conversation]],
    differences: dict | None = None,
    n_samples: int = 0,
) -> None:
    """Write every output file of an evaluation into ``out``.

    ``report["results"]`` maps each label to its metrics; samples.jsonl holds every conversation of every label.
    """
    results = report["results"]
    plot_toxicity_per_turn(out / "plots" / "toxicity_per_turn.png", results, report["config"]["horizon"])
    plot_toxicity_vs_nll(out / "plots" / "toxicity_vs_nll.png", convs_by_label)
    write_jsonl(
        out / "samples.jsonl",
        ({"adversary": label, **c.to_json()} for label, convs in convs_by_label.items() for c in convs),
    )
    last = list(convs_by_label)[-1]
    atomic_write(out / "report.md", render_markdown(report, results, differences, convs_by_label[last], n_samples))
    labels = list(results)
    pair = tuple(report.get("differences_of") or (labels[0], labels[-1]))
    dets = metric_detectors(results[labels[0]])
    page = render_html(
        report,
        convs_by_label,
        headline_lines(report["headline"], pair) if report.get("headline") else [],
        HEADLINE,
        [f"{m}@{d}" for d in dets for m in DETECTOR_METRICS],
        [out / "plots" / "toxicity_per_turn.png", out / "plots" / "toxicity_vs_nll.png"],
    )
    atomic_write(out / "report.html", page)
    write_json(out / "report.json", report)  # last: its presence marks a finished evaluation
