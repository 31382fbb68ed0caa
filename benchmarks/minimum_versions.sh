#!/usr/bin/env bash
# Issue 29: the declared lower bounds of the dependencies (pyproject.toml), installed in a fresh
# virtual environment, pass a fast subset of the tests. Each core dependency is pinned to its lower
# bound ("name==bound"); pip chooses the test tools that go with them. Writes
# benchmarks/results/minimum_versions.md (the versions installed and the tests' outcome).
# Run: bash benchmarks/minimum_versions.sh   (downloads the pinned wheels; a few minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=$(mktemp -d /tmp/deeplinear-minimum-versions.XXXXXX)  # a fresh folder of its own, never a user's
PYTHON=${PYTHON:-python3.12}
"$PYTHON" -m venv "$ENV/venv"
"$ENV/venv/bin/python" - > "$ENV/constraints.txt" <<'PY'
import re, tomllib
for requirement in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    name, bound = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)>=([0-9][0-9A-Za-z.]*)", requirement.split(";")[0].strip()).groups()
    print(f"{re.sub(r'\[.*\]', '', name)}=={bound}")
PY
"$ENV/venv/bin/python" -m pip install -q -c "$ENV/constraints.txt" ".[test]"
TESTS=(tests/test_priors.py tests/test_likelihood.py tests/test_arviz.py tests/test_persistence.py tests/test_crossvalidation.py)
set +e
( cd "$ENV" && "$ENV/venv/bin/python" -m pytest -q -p no:cacheprovider -n 2 -c /dev/null --rootdir "$OLDPWD" \
    -W "error::RuntimeWarning:deeplinear" "${TESTS[@]/#/$OLDPWD/}" ) > "$ENV/pytest.log" 2>&1
status=$?
set -e
{
  echo "# Minimum versions (issue 29)"
  echo
  echo "$(date -u +%Y-%m-%d) on $(uname -m), $("$ENV/venv/bin/python" --version); \`uptime\`: $(uptime)"
  echo
  echo "Each core dependency pinned to its declared lower bound (pyproject.toml), in a fresh virtual"
  echo "environment; tests: ${TESTS[*]}."
  echo
  echo "| package | installed |"
  echo "|---|---|"
  "$ENV/venv/bin/python" -m pip list --format=freeze | grep -iE "^(jax|jaxlib|numpyro|arviz|arviz-base|arviz-stats|arviz-plots|numpy|scipy|matplotlib|tqdm|h5netcdf|h5py|flatbuffers|xarray|pandas)==" \
    | sed -E 's/^(.*)==(.*)$/| \1 | \2 |/'
  echo
  echo "Outcome (exit status $status): $(tail -1 "$ENV/pytest.log")"
} > benchmarks/results/minimum_versions.md
cat benchmarks/results/minimum_versions.md
echo "environment and log: $ENV"
exit $status
