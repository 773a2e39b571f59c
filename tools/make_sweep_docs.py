"""Regenerate the generated parts of docs/sweeps.md from a real run of the default sweep: the
digits and language-model tables (between the `digits-table` and `lm-table` markers) and
docs/sweep_pareto.png.

    python tools/make_sweep_docs.py [--out sweep-results/docs]

Nothing in those parts is written by hand; rerun this after changing the default sweep.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKERS = {"lm": "lm-table", "digits": "digits-table"}


def main() -> None:
    import mpq.sweep as sweep
    from mpq.sweep.records import format_table, summarize

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="sweep-results/docs")
    args = p.parse_args()
    records = sweep.run(sweep.default_config(out=args.out), verbose=False)
    rows = summarize(records)
    if not rows or any(r["status"] != "ok" for r in rows):
        raise SystemExit(f"Expected every run to succeed. Received: {rows}")
    doc_path = ROOT / "docs" / "sweeps.md"
    doc = doc_path.read_text()
    for which, marker in MARKERS.items():
        start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
        if start not in doc or end not in doc:
            raise SystemExit(f"Expected the markers {start} and {end} in {doc_path}")
        picked = [r for r in rows if (r["model"] == "tiny_lm") == (which == "lm")]
        block = f"{start}\n```\n{format_table(picked)}\n```\n{end}"
        doc = re.sub(
            re.escape(start) + ".*?" + re.escape(end), lambda _m, b=block: b, doc, flags=re.S
        )
    doc_path.write_text(doc)
    shutil.copyfile(Path(args.out) / "pareto.png", ROOT / "docs" / "sweep_pareto.png")
    print(f"updated {doc_path} and docs/sweep_pareto.png from {args.out}")


if __name__ == "__main__":
    main()
