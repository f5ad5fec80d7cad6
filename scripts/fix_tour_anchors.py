"""Moves the line anchors of docs/tour.md back onto the code they name.

A tour link like [`forward`](../src/model/mlp.rs#L28-L33) points at a function by
line numbers, which go stale whenever code above it moves. For every link whose text
is a name in backticks, this finds the definition of that name in the file (`fn name`,
`struct name`, `enum name`, `const name`; the one nearest the old anchor) and
rewrites the anchor to span it, up to the closing brace at the definition's indent.
tests/inspect.rs checks the result (`tour_commands_run`).

    python3 scripts/fix_tour_anchors.py          # rewrites docs/tour.md in place
"""

import pathlib
import re

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
LINK = re.compile(r"\[`([^`]+)`\]\(\.\./([^)#]+)#L(\d+)-L(\d+)\)")


def span(lines, name, old_start):
    pattern = re.compile(rf"\b(fn|struct|enum|const|static|impl)\s+{re.escape(name)}\b")
    starts = [i for i, line in enumerate(lines) if pattern.search(line)]
    if not starts:
        return None
    start = min(starts, key=lambda i: abs(i + 1 - old_start))
    indent = len(lines[start]) - len(lines[start].lstrip())
    # Doc comments and attributes above the definition belong to it only if the old
    # anchor included them; keep it simple and start at the definition itself.
    end = start
    if not lines[start].rstrip().endswith(";"):
        for j in range(start + 1, len(lines)):
            stripped = lines[j].strip()
            if stripped.startswith("}") and len(lines[j]) - len(lines[j].lstrip()) == indent:
                end = j
                break
    return start + 1, end + 1


def main():
    tour = DOCS / "tour.md"
    text = tour.read_text()

    def fix(m):
        name, path, a, _ = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
        lines = (DOCS / ".." / path).resolve().read_text().splitlines()
        found = span(lines, name.rsplit("::", 1)[-1], a)
        if found is None:
            return m.group(0)
        return f"[`{name}`](../{path}#L{found[0]}-L{found[1]})"

    new = LINK.sub(fix, text)
    if new != text:
        tour.write_text(new)
        print("docs/tour.md: anchors updated")


if __name__ == "__main__":
    main()
