# Shared by the scripts/dev-*.sh service scripts (sourced, not run).
#   parse_dir NAME DEFAULT "$@"   sets $dir from --dir (made absolute and created); NAME is for messages
#   stop_pid NAME PIDFILE [TRIES] TERM, then KILL after TRIES×0.25 s, of the PID a script recorded; removes the file

parse_dir() {
  local name=$1; dir=$2; shift 2
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --dir) dir=$2; shift 2 ;;
      *) echo "$name: unknown option $1" >&2; exit 2 ;;
    esac
  done
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
}

stop_pid() {
  local name=$1 file=$2 tries=${3:-40} pid
  if [[ -f "$file" ]] && kill -0 "$(cat "$file")" 2>/dev/null; then
    pid=$(cat "$file")
    kill -TERM "$pid"
    for _ in $(seq 1 "$tries"); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    echo "$name stopped (pid $pid)"
  fi
  rm -f "$file"
}
