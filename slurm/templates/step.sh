  # The step runs in the background so this shell can take the signals.
  {{ command }} &
  step=$!
  while :; do
    interrupted=0; wait "$step"; rc=$?
    [ "$interrupted" = 1 ] || break  # woken by a signal: wait for the real exit
  done
