#!/usr/bin/env bash
# The repository stands alone (docs/decisions.md D20): nothing reaches outside the clone, every
# citation in code, docs, tests and scripts resolves to a file of the repository
# (docs/README.md#citations), and user-facing text (README.md, the CLI's help) cites none.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
python3 - <<'EOF'
import os, re, subprocess, sys

files = subprocess.run(
    ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
    check=True, capture_output=True, text=True,
).stdout.split()
files = [f for f in files if os.path.isfile(f)
         and f.endswith((".rs", ".md", ".sh", ".toml", ".c", ".py", ".yml"))]
me = "scripts/phases/12-citations.sh"
errors = []

def headings(path):
    """Section numbers (`0.2`, `10`) and GitHub anchors of a markdown file."""
    numbers, anchors = set(), set()
    for line in open(path, encoding="utf-8"):
        m = re.match(r"#+\s+(.*)", line)
        if m:
            title = m.group(1).strip()
            n = re.match(r"(\d+(?:\.\d+)*)\.?\s", title)
            if n:
                numbers.add(n.group(1))
            anchors.add(re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-"))
        anchors.update(re.findall(r'<a id="([^"]+)"', line))
    return numbers, anchors

decisions = {int(a[1:]) for a in headings("docs/decisions.md")[1] if re.fullmatch(r"d\d+", a)}
outside = re.compile(r"PORE_SHARED|\.\./shared|shared/reference|\bANCHORS\b|DESIGN\.md|PERF\.md|STYLE\.md")
section = re.compile(r"(docs/[\w-]+\.md)`?\s*§\s*(\d+(?:\.\d+)*)")
dtag = re.compile(r"\bD(\d{1,3})\b")

for f in files:
    if f == me:
        continue
    text = open(f, encoding="utf-8", errors="replace").read()
    for no, line in enumerate(text.splitlines(), 1):
        where = f"{f}:{no}"
        if outside.search(line):
            errors.append(f"{where}: reaches outside the repository: {line.strip()}")
        for doc, num in section.findall(line):
            if not os.path.isfile(doc):
                errors.append(f"{where}: no file {doc}")
            elif num not in headings(doc)[0]:
                errors.append(f"{where}: {doc} has no section {num}")
        for n in dtag.findall(line):
            if int(n) not in decisions:
                errors.append(f"{where}: D{n} is not in docs/decisions.md")
        if f == "README.md" and dtag.search(line):
            errors.append(f"{where}: the README cites a decision")
        if f.startswith("pore-cli/src/") and line.lstrip().startswith("///") and dtag.search(line):
            errors.append(f"{where}: CLI help cites a decision")
    if f.endswith(".md"):
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", link):
                continue
            target, _, anchor = link.partition("#")
            path = os.path.normpath(os.path.join(os.path.dirname(f), target)) if target else f
            if not os.path.exists(path):
                errors.append(f"{f}: broken link {link}")
            elif anchor and path.endswith(".md") and anchor not in headings(path)[1]:
                errors.append(f"{f}: no anchor #{anchor} in {path}")

for e in errors:
    print(e)
print(f"12-citations: {len(files)} files checked, {len(errors)} problems")
sys.exit(1 if errors else 0)
EOF
