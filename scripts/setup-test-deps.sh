#!/usr/bin/env bash
# Installs the real tools the integration tests run against, from Debian's packages:
#   bazel-bootstrap (Bazel 4.2.3), default-jdk-headless (its JVM), build-essential (gcc,
#   which Bazel's C++ toolchain detection needs even for shell rules), buildstream
#   (BuildStream 1.6.8), bubblewrap (which bst and the bubblewrap runner use), docker.io
#   (the docker runner's engine) and busybox-static (the root filesystems of test images
#   and chroots), postgresql (PostgreSQL 15), redis-server (Redis 7) and nginx, which the
#   scale-out tests start privately on loopback. The S3-compatible server (s3rver) comes
#   from the npm registry as a dev dependency.
# Needs root and Debian's package archive. When it cannot install something it says why;
# the tests that need the missing tool then fail with that reason.
set -uo pipefail

need=()
command -v bazel >/dev/null 2>&1 || need+=(bazel-bootstrap)
command -v javac >/dev/null 2>&1 || need+=(default-jdk-headless)
command -v gcc >/dev/null 2>&1 || need+=(build-essential)
command -v bst >/dev/null 2>&1 || need+=(buildstream)
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
[ -x /bin/busybox ] || need+=(busybox-static)
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[ -x /usr/sbin/nginx ] || need+=(nginx)

if [ ${#need[@]} -eq 0 ]; then
  echo "setup-test-deps: bazel, javac, gcc, bst, bwrap, dockerd, busybox, postgres, redis-server and nginx are installed"
  exit 0
fi

echo "setup-test-deps: installing ${need[*]}"
if [ "$(id -u)" != 0 ]; then
  echo "setup-test-deps: cannot install ${need[*]}: not root (run as root or install them yourself)" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-test-deps: cannot install ${need[*]}: no apt-get (this is not a Debian system)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing on a fresh machine; refresh them once if so.
if ! apt-get install -y -q --no-install-recommends "${need[@]}" >/tmp/remex-apt.log 2>&1; then
  apt-get update -q >>/tmp/remex-apt.log 2>&1
  if ! apt-get install -y -q --no-install-recommends "${need[@]}" >>/tmp/remex-apt.log 2>&1; then
    echo "setup-test-deps: apt-get install ${need[*]} failed; see /tmp/remex-apt.log:" >&2
    tail -5 /tmp/remex-apt.log >&2
    exit 0
  fi
fi
echo "setup-test-deps: installed ${need[*]}"
