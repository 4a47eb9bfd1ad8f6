# Small arithmetic helpers.
add() {
    echo $(($1 + $2))
}
