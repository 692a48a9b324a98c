# Sourced by scripts/serve, scripts/test and the benchmarks: make sure .venv exists and holds
# the project as it is now. Re-installs only when pyproject.toml changed since the last install,
# so a second run starts in a second.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv" >&2
    "$python" -m venv "$venv"
fi

# What to install besides the runtime: `venv_extras=dev` (scripts/test) adds the tools.
extras="${venv_extras:-}"
stamp="$venv/.runsvc-installed${extras:+-$extras}"
if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
    echo "installing runsvc${extras:+ with its $extras tools} into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -e "$repo${extras:+[$extras]}" >&2
    touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
