"""Reports of HIL runs: a JSON record and JUnit XML per run, PNG plots, a summary table.

Layout under the report directory::

    <scenario>/<policy>/record.json   bench, versions, seed, every measurement, applied timeline, logs
    <scenario>/<policy>/junit.xml     one testcase per measurement
    <scenario>/<policy>/run.png       GPU temperatures, caps, SoC, mode timeline; injections,
                                      upsets, shutdowns and checkpoint events marked
    <scenario>/compare.png            with --compare: the policy and the first compared side by
                                      side, work and bound (compare-<policy>.png: the others)
    summary.md, summary.json          the summary table
    junit.xml                         every run's measurements, one testsuite per run
"""

from __future__ import annotations

import itertools
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from hil.runner import RunResult, versions

SLOWDOWN_C = 89.0
SOC_FLOOR = 0.70
MODE_COLORS = {"BOOT": "#bbbbbb", "NOMINAL": "#4caf50", "POWER_SAVE": "#2196f3",
               "THERMAL_LIMIT": "#ff9800", "SAFE": "#e53935"}


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v


def record(result: RunResult) -> dict[str, Any]:
    s = result.scenario
    out: dict[str, Any] = _clean({
        "scenario": {"name": s.name, "title": s.title, "description": s.description, "source": s.source,
                     "orbit": s.orbit, "gpus": s.gpus, "rate_hz": s.rate_hz,
                     "plant": dict(s.plant), "initial": {k: v for k, v in s.initial},
                     "timeline": [i.describe() for i in s.timeline]},
        "policy": result.policy,
        "verdict": result.verdict,
        "error": result.error,
        "bench": result.bench,
        "versions": versions(),
        "seed": result.seed,
        "quick": result.quick,
        "started_utc": result.started_utc,
        "wall_s": result.wall_s,
        "period_s": result.period_s,
        "duration_s": result.duration_s,
        "measurements": [o.to_dict() for o in result.outcomes],
        "metrics": result.metrics,
        "applied": result.applied,
        "modes": result.modes,
        "events": result.events[-500:],
        "commands": result.commands,
        "samples": len(result.samples),
        "logs": result.logs,
        "plot": str(result.run_dir / "run.png"),
    })
    return out


def junit(results: list[RunResult]) -> ET.Element:
    suites = ET.Element("testsuites", name="umbra-hil")
    for r in results:
        judged = [o for o in r.outcomes if o.outcome != "skipped"]
        suite = ET.SubElement(
            suites, "testsuite", name=f"{r.scenario.name}[{r.policy}]", tests=str(len(r.outcomes) or 1),
            failures=str(sum(o.outcome == "fail" for o in judged)),
            errors=str(sum(o.outcome == "error" for o in judged) + (1 if r.error else 0)),
            skipped=str(sum(o.outcome == "skipped" for o in r.outcomes)), time=f"{r.wall_s:.2f}")
        if r.error:
            case = ET.SubElement(suite, "testcase", classname=f"hil.{r.scenario.name}.{r.policy}", name="run")
            ET.SubElement(case, "error", message=r.error[:200]).text = r.error
        for o in r.outcomes:
            case = ET.SubElement(suite, "testcase", classname=f"hil.{r.scenario.name}.{r.policy}", name=o.metric)
            text = f"{o.metric} = {_fmt(o.value)} {o.unit}, limit {_limits(o)}: {o.why}"
            if o.outcome == "fail":
                ET.SubElement(case, "failure", message=text).text = text
            elif o.outcome == "error":
                ET.SubElement(case, "error", message=text).text = text
            elif o.outcome == "skipped":
                ET.SubElement(case, "skipped", message="judged only with --compare")
            else:
                ET.SubElement(case, "system-out").text = text
    return suites


def _limits(o: Any) -> str:
    if o.min is not None and o.max is not None:
        return f"[{o.min:g}, {o.max:g}]"
    if o.min is not None:
        return f"≥ {o.min:g}"
    if o.max is not None:
        return f"≤ {o.max:g}"
    return "recorded"


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if abs(v) >= 1000:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def write_run(result: RunResult) -> dict[str, Path]:
    d = result.run_dir
    d.mkdir(parents=True, exist_ok=True)
    paths = {"record": d / "record.json", "junit": d / "junit.xml", "plot": d / "run.png"}
    try:
        plot_run(result, paths["plot"])
    except Exception as exc:  # a plot must never hide the verdict
        result.logs["plot_error"] = f"{type(exc).__name__}: {exc}"
    paths["record"].write_text(json.dumps(record(result), indent=2, ensure_ascii=False))
    ET.ElementTree(junit([result])).write(paths["junit"], encoding="utf-8", xml_declaration=True)
    return paths


# --- plots ---------------------------------------------------------------------------------------


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _eclipses(result: RunResult) -> list[tuple[float, float]]:
    spans, start = [], None
    for s in result.samples:
        if s.eclipse and start is None:
            start = s.t_s
        elif not s.eclipse and start is not None:
            spans.append((start, s.t_s))
            start = None
    if start is not None and result.samples:
        spans.append((start, result.samples[-1].t_s))
    return spans


def _marks(ax: Any, result: RunResult, scale: float, label: bool) -> None:
    for a in result.applied:
        ax.axvline(a["t_s"] / scale, color="#7b1fa2", lw=1.0, ls="--")
        if label:
            text = a.get("action") or ", ".join(f"{k}" for k in a.get("set", {}))
            ax.annotate(text, (a["t_s"] / scale, 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                        rotation=90, va="top", ha="right", color="#7b1fa2")
    for t0, t1 in _eclipses(result):
        ax.axvspan(t0 / scale, t1 / scale, color="#263238", alpha=0.08, lw=0)


def plot_run(result: RunResult, path: Path) -> None:
    plt = _plt()
    samples = result.samples
    fig, axes = plt.subplots(4, 1, figsize=(11, 10), sharex=True,
                             gridspec_kw={"height_ratios": [3, 2, 2, 0.6]})
    scale = 60.0
    t = [s.t_s / scale for s in samples]
    ax_t, ax_c, ax_s, ax_m = axes
    if samples:
        n = len(samples[0].temp_c)
        for i in range(n):
            ax_t.plot(t, [s.temp_c[i] if i < len(s.temp_c) else math.nan for s in samples], lw=0.8,
                      label=f"GPU {i}")
            ax_c.plot(t, [s.cap_w[i] if i < len(s.cap_w) else math.nan for s in samples], lw=0.8)
        ax_s.plot(t, [s.soc for s in samples], color="#1565c0", lw=1.2, label="state of charge")
        # Upsets and shutdowns: where their counters went up.
        for prev, cur in itertools.pairwise(samples):
            if cur.seu > prev.seu:
                ax_t.plot(cur.t_s / scale, max(cur.temp_c), "x", color="#6d4c41", ms=4)
            if cur.shutdowns > prev.shutdowns:
                ax_t.plot(cur.t_s / scale, max(cur.temp_c), "v", color="#d50000", ms=7)
    ax_t.axhline(SLOWDOWN_C, color="#d50000", lw=1, label="slowdown 89 °C")
    ax_t.axhline(SLOWDOWN_C - 2, color="#d50000", lw=1, ls=":", label="limit 87 °C")
    ax_t.set_ylabel("true die °C")
    ax_t.legend(fontsize=7, ncol=5, loc="lower right")
    ax_c.set_ylabel("cap W")
    ax_s.axhline(SOC_FLOOR, color="#d50000", lw=1, ls=":", label="floor 0.70")
    ax_s.set_ylabel("SoC")
    ax_s.legend(fontsize=7, loc="lower right")
    for ev in result.events:
        if ev["kind"].startswith("checkpoint"):
            ax_s.plot(ev["t_s"] / scale, 1.0, "|", color="#2e7d32", ms=8)
        elif ev["kind"] in ("link_down", "board_watchdog", "board_reset"):
            ax_c.plot(ev["t_s"] / scale, 0.0, "^", color="#d50000", ms=6, transform=ax_c.get_xaxis_transform())
    end = (result.duration_s or (samples[-1].t_s if samples else 1.0))
    bounds = [*result.modes, (end, "")]
    for (t0, mode), (t1, _) in itertools.pairwise(bounds):
        ax_m.axvspan(max(t0, 0) / scale, t1 / scale, color=MODE_COLORS.get(mode, "#9e9e9e"), lw=0)
    ax_m.set_yticks([])
    ax_m.set_ylabel("mode")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in MODE_COLORS.values()]
    ax_m.legend(handles, list(MODE_COLORS), fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.6))
    for i, ax in enumerate(axes):
        _marks(ax, result, scale, label=i == 0)
    ax_m.set_xlabel("board minutes since start (grey: eclipse)")
    fig.suptitle(f"{result.scenario.title} — {result.policy}: {result.verdict.upper()}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_compare(main: RunResult, other: RunResult | list[RunResult], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    scale = 60.0
    others = other if isinstance(other, list) else [other]
    for r, color in zip((main, *others), ("#1565c0", "#e65100", "#2e7d32", "#6a1b9a", "#795548"), strict=False):
        t = [s.t_s / scale for s in r.samples]
        axes[0].plot(t, [max(s.temp_c) for s in r.samples], color=color, lw=1, label=f"{r.policy} hottest GPU")
        axes[1].plot(t, [s.soc for s in r.samples], color=color, lw=1, label=r.policy)
        axes[2].plot(t, [s.work_done - s.work_lost for s in r.samples], color=color, lw=1,
                     label=f"{r.policy} work kept")
    bound = main.metrics.get("work_bound")
    if bound and main.samples:
        axes[2].plot([main.samples[-1].t_s / scale], [bound], "*", color="#000", ms=10,
                     label=f"board upper bound {bound:.0f}")
    oracle = next((o.metrics.get("oracle_bound") for o in others if o.policy == "oracle"), None)
    if oracle and main.samples:
        axes[2].plot([main.samples[-1].t_s / scale], [oracle], "P", color="#6a1b9a", ms=9,
                     label=f"oracle upper bound {oracle:.0f}")
    axes[0].axhline(SLOWDOWN_C, color="#d50000", lw=1, label="slowdown")
    axes[1].axhline(SOC_FLOOR, color="#d50000", lw=1, ls=":", label="floor")
    axes[0].set_ylabel("°C")
    axes[1].set_ylabel("SoC")
    axes[2].set_ylabel("work units")
    axes[2].set_xlabel("board minutes")
    for ax in axes:
        ax.legend(fontsize=7, loc="lower right")
        _marks(ax, main, scale, label=False)
    fig.suptitle(f"{main.scenario.title}: {main.policy} vs {', '.join(o.policy for o in others)}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- summary ---------------------------------------------------------------------------------------

_COLS = (("max_temp_c", "max °C"), ("slowdown_s", "slowdown GPU·s"), ("shutdowns", "shutdowns"),
         ("soc_min", "min SoC"), ("telemetry_gaps", "tm gaps"), ("work_useful", "work"))


#: A main run and what it was compared with: None, one run, or a list of runs.
Pair = tuple[RunResult, Any]


def _others(other: RunResult | list[RunResult] | None) -> list[RunResult]:
    """The runs a main run is compared with: none, one, or several (``--compare a,b``)."""
    if other is None:
        return []
    return list(other) if isinstance(other, list) else [other]


def _letter(policy: str) -> str:
    return policy[:1].upper()


def summary_rows(pairs: list[Pair]) -> list[dict[str, Any]]:
    rows = []
    for main, other in pairs:
        row: dict[str, Any] = {"scenario": main.scenario.name, "verdict": main.verdict,
                               "failed": [f"{o.metric}={_fmt(o.value)} (limit {_limits(o)})" for o in main.failed()],
                               "error": main.error, main.policy: dict(main.metrics),
                               "plot": str(main.run_dir / "run.png")}
        for i, o in enumerate(_others(other)):
            row[o.policy] = dict(o.metrics)
            row[f"{o.policy}_verdict"] = o.verdict
            row[f"{o.policy}_failed"] = [f"{x.metric}={_fmt(x.value)}" for x in o.failed()]
            row[f"{o.policy}_plot"] = str(main.run_dir.parent / ("compare.png" if i == 0 else f"compare-{o.policy}.png"))
            if i == 0:  # the names of a single comparison, as before
                row["baseline_verdict"] = o.verdict
                row["baseline_failed"] = row[f"{o.policy}_failed"]
                row["compare_plot"] = row[f"{o.policy}_plot"]
        rows.append(row)
    return rows


def summary_table(pairs: list[Pair]) -> str:
    """One row per scenario: the policy under test, then each compared policy (U / B / I …)."""
    policies: list[str] = []
    for _, other in pairs:
        for r in _others(other):
            if r.policy not in policies:
                policies.append(r.policy)
    main_letter = _letter(pairs[0][0].policy) if pairs else "U"
    letters = " / ".join([main_letter, *(_letter(p) for p in policies)])
    head = ["scenario", "verdict"]
    if policies:
        head += [f"{p} verdict" for p in policies]
        head += [f"{label} {letters}" for _, label in _COLS]
        head += ["bound", *(f"{main_letter}/{_letter(p)} work" for p in policies), f"{main_letter}/bound"]
        if "oracle" in policies:
            head += ["oracle bound", f"{main_letter}/oracle bound", "oracle plan/bound"]
    else:
        head += [label for _, label in _COLS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for main, other in pairs:
        m = main.metrics
        by_policy = {r.policy: r for r in _others(other)}
        cells = [main.scenario.name, main.verdict.upper() + (f" ({main.error[:40]})" if main.error else "")]
        cells += [by_policy[p].verdict.upper() if p in by_policy else "—" for p in policies]
        for key, _ in _COLS:
            if policies:
                cells.append(" / ".join([_fmt(m.get(key)), *(_fmt(by_policy[p].metrics.get(key))
                                                              if p in by_policy else "—" for p in policies)]))
            else:
                cells.append(_fmt(m.get(key)))
        if policies:
            cells.append(_fmt(m.get("work_bound")))
            cells += [_fmt(m.get(f"work_vs_{p}")) for p in policies]
            cells.append(_fmt(m.get("work_vs_bound")))
            if "oracle" in policies:
                orc = by_policy["oracle"].metrics if "oracle" in by_policy else {}
                cells += [_fmt(orc.get("oracle_bound")), _fmt(m.get("work_vs_oracle_bound")),
                          _fmt(orc.get("oracle_gap"))]
        lines.append("| " + " | ".join(cells) + " |")
    fails = [(main, o) for main, _ in pairs for o in main.failed()]
    if fails:
        lines.append("")
        lines.append(f"Failed measurements ({pairs[0][0].policy}):")
        for main, o in fails:
            unit = "" if o.unit in ("1", "") else f" {o.unit}"  # a ratio has no unit to print
            lines.append(f"- {main.scenario.name}: {o.metric} = {_fmt(o.value)}{unit}, limit {_limits(o)}"
                         f" — {o.why} (plot {main.run_dir / 'run.png'})")
    for run, _ in pairs:
        if run.error:
            lines.append(f"- {run.scenario.name}: run error: {run.error.splitlines()[0]}")
    return "\n".join(lines)


def write_report(pairs: list[Pair], report_dir: Path) -> str:
    """Every run's record, JUnit and plot; the comparison plots; the summary. Returns the table."""
    report_dir.mkdir(parents=True, exist_ok=True)
    everyone: list[RunResult] = []
    for main, other in pairs:
        write_run(main)
        everyone.append(main)
        for i, o in enumerate(_others(other)):
            write_run(o)
            everyone.append(o)
            try:
                plot_compare(main, o, main.run_dir.parent / ("compare.png" if i == 0 else f"compare-{o.policy}.png"))
            except Exception as exc:
                main.logs["compare_plot_error"] = f"{type(exc).__name__}: {exc}"
    table = summary_table(pairs)
    (report_dir / "summary.md").write_text("# umbra-hil summary\n\n" + table + "\n")
    (report_dir / "summary.json").write_text(json.dumps(_clean(summary_rows(pairs)), indent=2, ensure_ascii=False))
    ET.ElementTree(junit(everyone)).write(report_dir / "junit.xml", encoding="utf-8", xml_declaration=True)
    return table
