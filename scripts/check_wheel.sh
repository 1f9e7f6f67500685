#!/usr/bin/env bash
# The package as a user gets it: build the sdist and the wheel, check their metadata (twine), install the wheel
# into a fresh virtualenv and, from a folder outside the source tree, train the built-in demo for a few
# iterations with the installed `d2lightning` command. Fails when a built-in config of the source tree is missing
# from the wheel or from the installed package, or when the installed command cannot train.
#
#   PY=.venv/bin/python TORCH_SPEC=torch==2.13.0 bash scripts/check_wheel.sh     (or: make wheel-check)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
SOURCE=$PWD
work=$(mktemp -d "${TMPDIR:-/tmp}/d2lightning-wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "== build and check the distributions"
# from a copy of the files git knows (tracked, or new and not ignored): no stale build/ or *.egg-info/ of an
# earlier build can add files that the packaging configuration would leave out
git ls-files -z --cached --others --exclude-standard | "$PY" -c '
import shutil, sys
from pathlib import Path
dest = Path(sys.argv[1])
for name in sys.stdin.buffer.read().decode().split("\0"):
    if name and Path(name).is_file():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(name, dest / name)
' "$work/src"
"$PY" -m build --outdir "$work/dist" "$work/src" >"$work/build.log" 2>&1 || { tail -40 "$work/build.log"; exit 1; }
"$PY" -m twine check --strict "$work"/dist/*
wheel=$(ls "$work"/dist/*.whl)

echo "== the built-in configs (and py.typed) are in the wheel"
"$PY" -c "from d2lightning.model_zoo import builtin_config_names; print(*builtin_config_names(), sep='\n')" \
  >"$work/expected"
"$PY" - "$wheel" >"$work/in_wheel" <<'PYEOF'
import sys, zipfile
prefix = "d2lightning/model_zoo/configs/"
names = zipfile.ZipFile(sys.argv[1]).namelist()
if "d2lightning/py.typed" not in names:
    sys.exit("check_wheel: the wheel lacks d2lightning/py.typed")
configs = [n[len(prefix):] for n in names if n.startswith(prefix) and n.endswith((".yaml", ".py"))]
print(*sorted(c for c in configs if not c.rsplit("/", 1)[-1].startswith(("_", "."))), sep="\n")
PYEOF
if ! diff -u "$work/expected" "$work/in_wheel"; then
  echo "check_wheel: the wheel lacks built-in configs of the source tree (- lines above)" >&2
  exit 1
fi
grep -qx "shapes_detector.yaml" "$work/in_wheel"

echo "== install into a fresh virtualenv"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "$TORCH_SPEC"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "$wheel"

echo "== train the built-in demo with the installed command, outside the source tree"
cd "$work"
env -u PYTHONPATH venv/bin/python - "$SOURCE" "$work/expected" <<'PYEOF'
import sys
from pathlib import Path
import d2lightning
from d2lightning.model_zoo import builtin_config_names, get_config_file
source, expected = Path(sys.argv[1]), Path(sys.argv[2]).read_text().split()
where = Path(d2lightning.__file__).resolve()
assert source not in where.parents, f"d2lightning was imported from the source tree: {where}"
assert builtin_config_names() == expected, (builtin_config_names(), expected)
assert Path(get_config_file("shapes_detector")).is_file()
print(f"installed at {where.parent}; built-in configs: {', '.join(expected)}")
PYEOF
env -u PYTHONPATH venv/bin/d2lightning --help >/dev/null
env -u PYTHONPATH venv/bin/d2lightning train --config-file shapes_detector \
  SOLVER.MAX_ITER 4 SOLVER.WARMUP_ITERS 1 SOLVER.CHECKPOINT_PERIOD 2 TEST.EVAL_PERIOD 0 \
  TEST.PRECISE_BN.NUM_ITER 2 LIGHTNING.PROGRESS_BAR False OUTPUT_DIR "$work/out" >"$work/train.log" 2>&1 \
  || { tail -40 "$work/train.log"; exit 1; }
for f in model_0000001.pth model_0000003.pth model_final.pth last_checkpoint metrics.json; do
  test -f "$work/out/$f" || { echo "check_wheel: the demo run wrote no $f" >&2; ls "$work/out" >&2; exit 1; }
done
grep -q '"iteration": 3' "$work/out/metrics.json"
grep -q "bbox/AP" "$work/out/metrics.json"
echo "check_wheel: OK ($(basename "$wheel"): twine check passed, configs shipped, the installed command trained)"
