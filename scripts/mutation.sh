#!/usr/bin/env bash
# Mutation testing of LMAPS's mathematics. Not run in CI (docs/results/mutation.md has
# the last table, this command and its wall time).
#
#   INVERSEBENCH_ROOT=/path/to/InverseBench bash scripts/mutation.sh           # every target, file by file
#   INVERSEBENCH_ROOT=... bash scripts/mutation.sh schedules solver            # some targets only
#   MUTATION_PREVIOUS=/tmp/lmaps-mutation-old bash scripts/mutation.sh          # rerun only last time's survivors
#
#  1. copies the working tree (tracked and untracked, not ignored files) to a scratch folder
#     ($MUTATION_WORKDIR, default /tmp/lmaps-mutation): the repository itself is never mutated;
#  2. runs mutmut target by target (setup.cfg's [mutmut] section: the files, the focused test selection,
#     -x, the per-mutant timeout); mutmut runs each mutant against the selected tests that execute the
#     mutated function; the targets and their mutant globs are in scripts/mutation.py. With
#     MUTATION_PREVIOUS (the scratch folder of an earlier run), only the mutants of functions that are new or
#     changed since then (mutmut's AST hash) and the earlier survivors are run; the earlier kills of unchanged
#     functions stand (tests are only ever added; rerun in full after weakening a test);
#  3. applies the hand-made mutants of scripts/mutation.py (the two re-noising mutants, the
#     adjoints that InverseBench's class factories define, which mutmut cannot reach) one at a time to a
#     clean copy and runs the tests named with each;
#  4. prints the per-file table: killed / survived / no tests / equivalent (scripts/mutation_equivalents.txt
#     lists each equivalent mutant with its reason) and killed / (all − equivalent), then the survivors
#     that are not listed as equivalent.
#
# Environment: MUTATION_JOBS (mutants run in parallel, default 2), MUTATION_WORKDIR, MUTATION_KEEP=1 (keep
# the scratch folder and its results, e.g. to rerun one target), MUTATION_PREVIOUS. Needs the mutation extra:
# .venv/bin/pip install -c constraints.txt -e '.[mutation]'
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py="$repo/.venv/bin/python"
mutmut="$repo/.venv/bin/mutmut"
work=${MUTATION_WORKDIR:-/tmp/lmaps-mutation}
jobs=${MUTATION_JOBS:-2}
previous=${MUTATION_PREVIOUS:-}
mapfile -t all < <("$py" "$repo/scripts/mutation.py" targets)

if [ ! -x "$mutmut" ]; then
    echo "mutmut is not installed: .venv/bin/pip install -c constraints.txt -e '.[mutation]'" >&2
    exit 2
fi
if [ -z "${INVERSEBENCH_ROOT:-}" ]; then
    echo "note: INVERSEBENCH_ROOT is not set: the InverseBench operator tests skip, so the mutants of the" \
         "inversebench_algebra, inversebench_scattering and inversebench_mri targets survive" >&2
fi
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")
for t in "${targets[@]}"; do
    "$py" "$repo/scripts/mutation.py" globs "$t" > /dev/null || exit 2
done
if [ -n "$previous" ] && [ ! -d "$previous/src/mutants" ]; then
    echo "MUTATION_PREVIOUS=$previous holds no earlier run (no src/mutants folder)" >&2
    exit 2
fi

start=$(date +%s)
[ "${MUTATION_KEEP:-0}" = 1 ] || rm -rf "$work"
mkdir -p "$work/src"
(cd "$repo" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$work/src")
cd "$work/src"
export PYTHONDONTWRITEBYTECODE=1

for t in "${targets[@]}"; do
    t0=$(date +%s)
    if [ -n "$previous" ]; then
        mapfile -t names < <("$py" "$repo/scripts/mutation.py" rerun --mutants "$previous/src/mutants" "$t")
        how="${#names[@]} names: changed functions and earlier survivors"
    else
        mapfile -t names < <("$py" "$repo/scripts/mutation.py" globs "$t")
        how="all mutants"
    fi
    if [ ${#names[@]} -gt 0 ] && ! "$mutmut" run --max-children "$jobs" "${names[@]}" > "$work/mutmut-$t.log" 2>&1
    then
        echo "mutmut failed on target $t; see $work/mutmut-$t.log" >&2
        tail -n 30 "$work/mutmut-$t.log" >&2
        exit 1
    fi
    echo "$t ($how): $(( $(date +%s) - t0 )) s" >&2
done

"$py" "$repo/scripts/mutation.py" hand --source "$work/src" --out "$work/hand.json" "${targets[@]}"
"$py" "$repo/scripts/mutation.py" report --mutants "$work/src/mutants" --hand "$work/hand.json" \
    --equivalents "$repo/scripts/mutation_equivalents.txt" ${previous:+--previous "$previous/src/mutants"} \
    "${targets[@]}"
echo "wall time: $(( $(date +%s) - start )) s (scratch folder: $work)"
