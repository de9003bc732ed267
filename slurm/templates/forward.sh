# Stop signals (--signal=B:..., SIGTERM) are caught from here on and passed to the
# step once it runs; one that comes before the step starts skips it.
step=""; sig=""; interrupted=0
forward() { interrupted=1; sig=$1; [ -z "$step" ] || kill -s "$1" "$step" 2>/dev/null; }
trap 'forward {{ signal }}' {{ signal }}
trap 'forward TERM' TERM
