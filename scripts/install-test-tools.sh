#!/bin/sh
# Test-only tools, from the package registries CI can reach, into .tools/ (git-ignored):
#   promtool, prometheus  Debian's `prometheus` package, unpacked (no service is installed);
#                      the server runs the dashboard's and rules' queries against a live worker
#   helm-render        tools/helm-render, built with Debian's Go and sprig (no helm binary
#                      is installable here; see tools/helm-render/main.go)
#   compose_spec.json  the Compose file JSON Schema shipped in the docker-compose wheel on PyPI
#   qemu-x86_64-static Debian's qemu-user-static, unpacked: the local model server is loaded
#                      on an emulated Haswell, whatever CPU runs the tests
# Go and the Go libraries are Debian packages installed with apt-get (needs root or sudo).
set -eu
cd "$(dirname "$0")/.."
TOOLS="$PWD/.tools"
mkdir -p "$TOOLS/bin"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

have_go() { command -v go >/dev/null 2>&1 && [ -d /usr/share/gocode/src/github.com/Masterminds/sprig ]; }
need=""
{ [ -x "$TOOLS/bin/promtool" ] && [ -x "$TOOLS/bin/prometheus" ]; } || need="$need prometheus"
render_stale() { [ ! -x "$TOOLS/bin/helm-render" ] || [ tools/helm-render/main.go -nt "$TOOLS/bin/helm-render" ]; }
if render_stale && ! have_go; then need="$need golang-go+sprig"; fi
want_qemu() { [ "$(uname -m)" = x86_64 ] && [ ! -x "$TOOLS/bin/qemu-x86_64-static" ]; }
want_qemu && need="$need qemu-user-static"
if [ -n "$need" ]; then
  echo "make test: installing the deployment tests' tools into .tools/ (once):"
  echo "  promtool, prometheus  run the alert rules' unit tests and every dashboard query"
  echo "                        against a live worker (Debian's prometheus package, unpacked)"
  echo "  helm-render           renders the Helm chart with Helm's template engine (built"
  echo "                        with Debian's Go and sprig packages: apt-get install)"
  echo "  compose_spec.json     validates docker-compose.yml (from the docker-compose wheel)"
  echo "  qemu-x86_64-static    loads the local model server on an emulated Haswell CPU"
  echo "                        (Debian's qemu-user-static package, unpacked)"
  if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
    echo "error: these come from Debian packages and this machine has no apt-get/dpkg-deb." >&2
    echo "  Put promtool and prometheus (2.x) into .tools/bin/, install Go with" >&2
    echo "  github.com/Masterminds/sprig under /usr/share/gocode, then run make test again." >&2
    exit 1
  fi
  if [ -n "$SUDO" ] && ! command -v sudo >/dev/null 2>&1; then
    echo "error: installing$need needs root or sudo, and there is no sudo." >&2
    exit 1
  fi
fi

apt_fetch() {  # apt_fetch PKG: download PKG's .deb into the current directory
  apt-get download "$1" 2>/dev/null || { $SUDO apt-get update -qq && apt-get download "$1"; }
}

if [ ! -x "$TOOLS/bin/promtool" ] || [ ! -x "$TOOLS/bin/prometheus" ]; then
  work=$(mktemp -d)
  (cd "$work" && apt_fetch prometheus && dpkg-deb -x prometheus_*.deb root)
  cp "$work/root/usr/bin/promtool" "$work/root/usr/bin/prometheus" "$TOOLS/bin/"
  rm -rf "$work"
fi

if want_qemu; then
  work=$(mktemp -d)
  (cd "$work" && apt_fetch qemu-user-static && dpkg-deb -x qemu-user-static_*.deb root)
  cp "$work/root/usr/bin/qemu-x86_64-static" "$TOOLS/bin/"
  rm -rf "$work"
fi

GO_PKGS="golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v2-dev"
if render_stale; then
  if ! have_go; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $GO_PKGS \
      || { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $GO_PKGS; }
  fi
  GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$TOOLS/gocache" \
    go build -o "$TOOLS/bin/helm-render" ./tools/helm-render
fi

if [ ! -f "$TOOLS/compose_spec.json" ]; then
  work=$(mktemp -d)
  .venv/bin/python -m pip download -q --no-deps --disable-pip-version-check \
    docker-compose==1.29.2 -d "$work" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read('compose/config/compose_spec.json'))" \
    "$work"/docker_compose-1.29.2-*.whl > "$TOOLS/compose_spec.json"
  rm -rf "$work"
fi
echo "test tools ready in .tools/: $(ls "$TOOLS/bin" | tr '\n' ' ')"
