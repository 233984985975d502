# Sourced by the accuracy scripts: run NAME OPTIONS… trains `$MSQ train OPTIONS… --out $RUNS/NAME`
# once. A run whose summary.json exists is kept; one with only a checkpoint (interrupted) is resumed.
# The log goes to $RUNS/NAME.log.
run() {  # name, then msq train options
    local name=$1; shift
    [[ -f "$RUNS/$name/summary.json" ]] && return 0
    local resume=()
    [[ -f "$RUNS/$name/checkpoint.msqckpt" ]] && resume=(--resume)
    echo "== $name: msq train $*" >&2
    "$MSQ" train "$@" --out "$RUNS/$name" "${resume[@]}" > "$RUNS/$name.log" 2>&1
}
