# Sourced by the per-model accuracy scripts (mobilenet-accuracy.sh, deit-accuracy.sh):
# accuracy_grid TABLE RECIPE… trains the rows in $ROWS (float, msq-10.67, dorefa3; -act8 adds 8-bit
# activations: PACT, or LSQ on the inputs a model declares signed) with the recipe's
# `msq train` options into $RUNS, one run per process (finished runs kept, an interrupted one
# resumed; resumable-run.sh), then prints `python3 TABLE $RUNS`.
accuracy_grid() {
    local table=$1; shift
    mkdir -p "$RUNS"
    if [[ -z "${MSQ:-}" ]]; then
        swift build -c release --product msq >/dev/null
        MSQ=$(swift build -c release --show-bin-path)/msq
    fi
    source bench/scripts/resumable-run.sh
    for r in $ROWS; do
        case $r in
            float)     run "$r" "$@" --method fp ;;
            msq-10.67) run "$r" "$@" --method msq --target-compression 10.67 ;;
            dorefa3)   run "$r" "$@" --method dorefa --weight-bits 3 --dorefa-scaled ;;
            msq-10.67-act8) run "$r" "$@" --method msq --target-compression 10.67 --act-bits 8 ;;
            dorefa3-act8)   run "$r" "$@" --method dorefa --weight-bits 3 --dorefa-scaled --act-bits 8 ;;
            *) echo "unknown row $r (float, msq-10.67, dorefa3, msq-10.67-act8, dorefa3-act8)" >&2; exit 1 ;;
        esac
    done
    python3 "$table" "$RUNS"
}
