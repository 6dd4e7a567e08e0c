# Sourced by scripts/test and scripts/demo: cd to the repo root and make sure
# .venv exists with the project installed (editable, with the test extras).
# The install is redone whenever pyproject.toml changes.
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
stamp=.venv/.loopguard-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    rm -f "$stamp"
    .venv/bin/pip install -q -e ".[test]"
    echo "$want" > "$stamp"
fi
