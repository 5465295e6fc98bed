"""Writing ``report.md`` (and ``report.json``) from experiment results."""
import json
import math
import numbers
import os
import platform

import numpy as np

__all__ = ["write_report", "format_value", "markdown_table"]

_HELD = {True: "held", False: "did not hold", None: "partly held"}


def format_value(v):
    """A table cell: floats with 3-4 significant digits, the rest as str."""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        v = float(v)
        if math.isnan(v):
            return "–"
        if v == 0:
            return "0"
        a = abs(v)
        if a >= 1000 or a < 1e-3:
            return f"{v:.3g}" if 1e-3 <= a < 1e5 else f"{v:.2e}"
        if a >= 100:
            return f"{v:.0f}"
        if a >= 10:
            return f"{v:.1f}"
        return f"{v:.3f}"
    return str(v)


def markdown_table(columns, rows):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format_value(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        v = float(obj)
        return float(f"{v:.6g}") if math.isfinite(v) else None
    return obj if obj is None or isinstance(obj, str) else str(obj)


def _environment(settings):
    import fastnorm
    return (f"fastnorm {fastnorm.__version__} ({settings['backend']} backend, {settings['isa']} kernels, "
            f"{settings['threads']} thread{'s' if settings['threads'] != 1 else ''}), NumPy {np.__version__}, "
            f"Python {platform.python_version()}, {os.cpu_count()} CPUs")


def write_report(results, out_dir, settings, command):
    """Write ``out_dir/report.md`` and ``out_dir/report.json``; returns the report's path.

    settings: dict with quick, seed, threads, backend, isa, seconds (total)."""
    os.makedirs(out_dir, exist_ok=True)
    mode = "quick (small data, few epochs)" if settings["quick"] else "full"
    lines = ["# fastnorm experiments: the lecture's claims, tested", "",
             f"Regenerate with: `{command}`", "",
             f"Run: {mode}, seed {settings['seed']}; {_environment(settings)}; "
             f"{settings['seconds']:.0f} s in all. Every number below is deterministic for the seed "
             "except measured times (the machine is shared and timings vary by 20-30 %).", "",
             "| experiment | claim | verdict |", "|---|---|---|"]
    for r in results:
        lines.append(f"| [{r.name}](#{r.name}) | {r.title} | {_HELD[r.held]} |")
    lines.append("")
    for r in results:
        lines += [f'<a id="{r.name}"></a>', f"## {r.name}: {r.title}", "",
                  f"**Claim.** {r.claim}", "", f"**Setup.** {r.setup}", "",
                  markdown_table(r.columns, r.rows), ""]
        for caption, cols, rows in r.tables:
            lines += [caption, "", markdown_table(cols, rows), ""]
        for fig in r.figures:
            lines += [f"![{r.name}]({fig})", ""]
        for note in r.notes:
            lines += [f"*Note.* {note}", ""]
        lines += [f"**Did the claim hold here?** {r.verdict}", "",
                  f"<sub>{r.seconds:.1f} s</sub>", ""]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    payload = {"command": command, "settings": settings,
               "experiments": {r.name: {"title": r.title, "held": r.held, "verdict": r.verdict,
                                        "seconds": r.seconds, "columns": r.columns, "rows": r.rows,
                                        "data": r.data} for r in results}}
    with open(os.path.join(out_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(_jsonable(payload), f, indent=1)
    return path
