# Sourced by seeds.sh and depth2.sh: `train NAME OVERRIDES...` runs the quickstart with the cached teacher
# ($TEACHER) and no control into $OUT/NAME at low priority, unless its metrics.json exists; the log
# (ending with the wall time) in $OUT/NAME.log.
train() {
    local name=$1; shift
    [ -f "$OUT/$name/metrics.json" ] && return 0
    /usr/bin/time -f "WALL %e s" nice -n 10 distill-train experiment=quickstart control=false teacher.path="$TEACHER" \
        hydra.run.dir="$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
}
