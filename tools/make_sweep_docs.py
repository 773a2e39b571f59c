"""Regenerate the generated parts of docs/sweeps.md from a real run of the default sweep: the
language-model task's table (between the `lm-table` markers) and docs/sweep_pareto.png.

    python tools/make_sweep_docs.py [--out sweep-results/docs]

Nothing in those parts is written by hand; rerun this after changing the default sweep.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- lm-table:start -->", "<!-- lm-table:end -->"


def main() -> None:
    import mpq.sweep as sweep
    from mpq.sweep.records import format_table, summarize

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="sweep-results/docs")
    args = p.parse_args()
    records = sweep.run(sweep.default_config(out=args.out), verbose=False)
    rows = [r for r in summarize(records) if r["model"] == "tiny_lm"]
    if not rows or any(r["status"] != "ok" for r in rows):
        raise SystemExit(f"Expected every tiny_lm run to succeed. Received: {rows}")
    doc_path = ROOT / "docs" / "sweeps.md"
    doc = doc_path.read_text()
    if START not in doc or END not in doc:
        raise SystemExit(f"Expected the markers {START} and {END} in {doc_path}")
    block = f"{START}\n```\n{format_table(rows)}\n```\n{END}"
    doc = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _m: block, doc, flags=re.S)
    doc_path.write_text(doc)
    shutil.copyfile(Path(args.out) / "pareto.png", ROOT / "docs" / "sweep_pareto.png")
    print(f"updated {doc_path} and docs/sweep_pareto.png from {args.out}")


if __name__ == "__main__":
    main()
