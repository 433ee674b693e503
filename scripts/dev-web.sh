#!/usr/bin/env bash
# Web and git servers on loopback for tests and local trials, with a private CA:
#   https://localhost:18443  (TLS, certificate from DIR/ca.pem)
#     /git/<repo>.git    git smart HTTP (git http-backend via fcgiwrap), basic auth user fem-git
#     /files/...         task files from DIR/files, basic auth user fem-files
#     /dav/...           WebDAV PUT into DIR/dav, basic auth user fem-upload
#   http://127.0.0.1:18080   /files/ and /dav/ as above (same logins)
#   git://127.0.0.1:19418/<repo>.git   git daemon, no auth
# Bare repositories live in DIR/repos; passwords in DIR/password-<user>.
#
#   scripts/dev-web.sh start [--dir DIR]
#   scripts/dev-web.sh stop  [--dir DIR]
set -euo pipefail
cmd=${1:-}; shift || true
source "$(dirname "$0")/lib.sh"
parse_dir dev-web.sh var/dev-web "$@"
users=(fem-git fem-files fem-upload)

need() { command -v "$1" >/dev/null || { echo "dev-web.sh: $1 is missing (apt-get install $2)" >&2; exit 1; }; }

certificates() {
  [[ -f "$dir/server.pem" ]] && return 0
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 3650 \
    -subj "/CN=fem-web-test-ca" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout "$dir/server.key" -out "$dir/server.csr" -subj "/CN=localhost" 2>/dev/null
  printf 'subjectAltName=DNS:localhost\n' > "$dir/san.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -out "$dir/server.pem" -days 825 -extfile "$dir/san.ext" 2>/dev/null
}

logins() {
  for u in "${users[@]}"; do
    [[ -f "$dir/password-$u" ]] || { head -c 12 /dev/urandom | base64 | tr -d '/+=' > "$dir/password-$u"; chmod 600 "$dir/password-$u"; }
    # Each location accepts only its own user: one file per user.
    htpasswd -bn "$u" "$(cat "$dir/password-$u")" > "$dir/htpasswd-$u"
  done
}

nginx_conf() {
  local files_and_dav="
    location /files/ {
      auth_basic fem-files; auth_basic_user_file $dir/htpasswd-fem-files;
      alias $dir/files/;
    }
    location /dav/ {
      auth_basic fem-upload; auth_basic_user_file $dir/htpasswd-fem-upload;
      alias $dir/dav/;
      dav_methods PUT DELETE; create_full_put_path on; dav_access user:rw group:r all:r;
      client_max_body_size 0;
      client_body_temp_path $dir/nginx/dav-temp;
    }"
  cat > "$dir/nginx/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log warn;
events { worker_connections 256; }
http {
  access_log $dir/nginx/access.log;
  client_body_temp_path $dir/nginx/client-temp;
  proxy_temp_path $dir/nginx/proxy-temp;
  fastcgi_temp_path $dir/nginx/fastcgi-temp;
  uwsgi_temp_path $dir/nginx/uwsgi-temp;
  scgi_temp_path $dir/nginx/scgi-temp;
  sendfile on;
  server {
    listen 127.0.0.1:18443 ssl;
    server_name localhost;
    ssl_certificate $dir/server.pem;
    ssl_certificate_key $dir/server.key;
    location ~ ^/git(/.*)\$ {
      auth_basic fem-git; auth_basic_user_file $dir/htpasswd-fem-git;
      client_max_body_size 0;
      fastcgi_pass unix:$dir/fcgiwrap.sock;
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME /usr/lib/git-core/git-http-backend;
      fastcgi_param GIT_PROJECT_ROOT $dir/repos;
      fastcgi_param GIT_HTTP_EXPORT_ALL "";
      fastcgi_param PATH_INFO \$1;
      fastcgi_param REMOTE_USER \$remote_user;
    }
    $files_and_dav
  }
  server {
    listen 127.0.0.1:18080;
    $files_and_dav
  }
}
CONF
}

running() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  need nginx nginx; need fcgiwrap fcgiwrap; need git git; need htpasswd apache2-utils; need openssl openssl
  mkdir -p "$dir/repos" "$dir/files" "$dir/dav" "$dir/nginx"
  for t in client-temp proxy-temp fastcgi-temp uwsgi-temp scgi-temp dav-temp; do mkdir -p "$dir/nginx/$t"; done
  # nginx's worker runs as nobody: it writes uploads and temp files, and reads the files and the password files.
  chown -R nobody "$dir/dav" "$dir/nginx"
  chmod 755 "$dir" "$dir/files"
  certificates
  logins
  chmod 644 "$dir"/htpasswd-*
  nginx_conf
  if ! running "$dir/fcgiwrap.pid"; then
    rm -f "$dir/fcgiwrap.sock"
    fcgiwrap -s "unix:$dir/fcgiwrap.sock" > "$dir/fcgiwrap.log" 2>&1 &
    echo $! > "$dir/fcgiwrap.pid"
    for _ in $(seq 1 40); do [[ -S "$dir/fcgiwrap.sock" ]] && break; sleep 0.1; done
    chmod 666 "$dir/fcgiwrap.sock"
  fi
  if ! running "$dir/nginx.pid"; then
    nginx -p "$dir/nginx" -c "$dir/nginx/nginx.conf" > "$dir/nginx/stdout.log" 2>&1 &
    echo $! > "$dir/nginx.pid"
  fi
  if ! running "$dir/git-daemon.pid"; then
    git daemon --listen=127.0.0.1 --port=19418 --export-all --base-path="$dir/repos" --reuseaddr "$dir/repos" \
      > "$dir/git-daemon.log" 2>&1 &
    echo $! > "$dir/git-daemon.pid"
  fi
  for _ in $(seq 1 40); do
    curl -s -o /dev/null --max-time 1 http://127.0.0.1:18080/ && (echo > /dev/tcp/127.0.0.1/19418) 2>/dev/null && break
    sleep 0.25
  done
  curl -s -o /dev/null --max-time 2 --cacert "$dir/ca.pem" https://localhost:18443/ \
    || { echo "dev-web.sh: nginx did not start; see $dir/nginx/error.log" >&2; tail -5 "$dir/nginx/error.log" >&2; exit 1; }
  (echo > /dev/tcp/127.0.0.1/19418) 2>/dev/null \
    || { echo "dev-web.sh: git daemon did not start; see $dir/git-daemon.log" >&2; exit 1; }
  echo "web servers on https://localhost:18443 and http://127.0.0.1:18080, git daemon on 127.0.0.1:19418 ($dir)"
}

stop() {
  stop_pid nginx "$dir/nginx.pid"
  stop_pid fcgiwrap "$dir/fcgiwrap.pid"
  stop_pid "git daemon" "$dir/git-daemon.pid"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) sed -n '2,14p' "$0"; exit 2 ;;
esac
