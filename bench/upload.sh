#!/usr/bin/env bash
# Upload benchmark: a 1 GB output delivered by fem-client's stage-out (collect, sha256, HTTP PUT streamed from disk,
# manifest) and by `curl -T` of the same file to the same nginx WebDAV server (basic auth), alternating, side by side
# in one run. Prints both throughputs and the ratio, and the benchmark's peak memory. Starts an nginx of its own
# (plain HTTP WebDAV on 127.0.0.1:${FEM_BENCH_WEB_PORT:-18180}, in .build-bench/upload/nginx) and stops it by its PID.
#
#   bash bench/upload.sh [ROUNDS] [MB]      (default 3 rounds of 1024 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
mb=${2:-1024}
port=${FEM_BENCH_WEB_PORT:-18180}
work=$(pwd)/.build-bench/upload
web=$work/nginx
nginx_pid=""
cleanup() {
  if [[ -n "$nginx_pid" ]]; then kill "$nginx_pid" 2>/dev/null; wait "$nginx_pid" 2>/dev/null || true; fi
  rm -rf "$web/dav"
}
trap cleanup EXIT
command -v nginx >/dev/null || { echo "upload.sh: nginx is missing (apt-get install nginx)" >&2; exit 1; }
command -v htpasswd >/dev/null || { echo "upload.sh: htpasswd is missing (apt-get install apache2-utils)" >&2; exit 1; }
mkdir -p "$work" "$web/dav" "$web/temp" "$web/client-temp"
[[ -f "$web/password" ]] || { head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$web/password"; chmod 600 "$web/password"; }
htpasswd -ic "$web/htpasswd" fem-upload < "$web/password" 2>/dev/null
chmod 644 "$web/htpasswd"
# nginx's worker runs as nobody: it writes the uploads and its temp files.
chown -R nobody "$web/dav" "$web/temp" "$web/client-temp"
cat > "$web/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $web/nginx.pid;
error_log $web/error.log warn;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $web/client-temp;
  proxy_temp_path $web/temp; fastcgi_temp_path $web/temp; uwsgi_temp_path $web/temp; scgi_temp_path $web/temp;
  server {
    listen 127.0.0.1:$port;
    location /dav/ {
      auth_basic fem-upload; auth_basic_user_file $web/htpasswd;
      alias $web/dav/;
      dav_methods PUT DELETE; create_full_put_path on; dav_access user:rw group:r all:r;
      client_max_body_size 0;
      client_body_temp_path $web/temp;
    }
  }
}
CONF
nginx -p "$web" -c "$web/nginx.conf" > "$web/stdout.log" 2>&1 &
nginx_pid=$!
for _ in $(seq 1 50); do curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/" && break; sleep 0.1; done
kill -0 "$nginx_pid" 2>/dev/null || { echo "upload.sh: nginx did not start; see $web/error.log" >&2; cat "$web/error.log" >&2; exit 1; }
[[ -f "$work/output-$mb.bin" ]] || head -c "$((mb * 1024 * 1024))" /dev/urandom > "$work/output-$mb.bin"
swift build -c release --product fem-bench 2>&1 | tail -1
FEM_BENCH_USER=fem-upload FEM_BENCH_PASSWORD_FILE="$web/password" ${FEM_BENCH_WRAP:-} \
  "$(swift build -c release --show-bin-path)/fem-bench" upload "http://127.0.0.1:$port/dav/bench" "$work/output-$mb.bin" "$rounds"
