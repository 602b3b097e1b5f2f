# Sourced by multi_run.sh and cross_run.sh: run <name> <distill-train overrides...> into $OUT/<name> (no
# control), its log in $OUT/<name>.log and its wall seconds in $OUT/<name>.wall; a run whose metrics.json
# exists is skipped.
run() {
    local name=$1; shift
    [ -f "$OUT/$name/metrics.json" ] && return 0
    local start=$(date +%s)
    nice -n 10 distill-train control=false hydra.run.dir="$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
    echo $(( $(date +%s) - start )) > "$OUT/$name.wall"
}
