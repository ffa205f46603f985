#!/usr/bin/env bash
# Makes a Docker engine and the docker runner's test image available, for the tests:
#   1. if no engine answers (on DOCKER_HOST, else /var/run/docker.sock), starts Debian's
#      dockerd (package docker.io) in the background, logging to /tmp/remex-dockerd.log,
#      trying flags from the defaults towards the most conservative (vfs storage, no
#      iptables, no bridge) until one answers `docker info`;
#   2. if the image remex-test/busybox:1 is missing, builds it with `docker import` from a
#      root filesystem made of Debian's busybox-static (no registry needed);
#   3. checks that `docker run --rm --network none remex-test/busybox:1 sh -c 'echo ok'` works.
# Idempotent and quick when everything is already there. Exits non-zero with the reason when
# it cannot. Needs root to start dockerd. Leaves dockerd running.
#
# Environment: REMEX_DOCKERD_WAIT (seconds to wait for a started dockerd, default 40),
# REMEX_TEST_IMAGE (default remex-test/busybox:1).
set -euo pipefail

IMAGE=${REMEX_TEST_IMAGE:-remex-test/busybox:1}
SOCKET=/var/run/docker.sock
LOG=/tmp/remex-dockerd.log
WAIT=${REMEX_DOCKERD_WAIT:-40}
BUSYBOX=/bin/busybox

say() { echo "docker-env: $*"; }
fail() {
  echo "docker-env: $*" >&2
  exit 1
}
engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

command -v docker >/dev/null 2>&1 || fail "no docker client on PATH: install Debian's docker.io (apt-get install docker.io)"

# Several test files may call this at once: one at a time.
exec 9>/tmp/remex-docker-env.lock
flock -w $((WAIT * 4 + 60)) 9 || fail "another docker-env.sh holds /tmp/remex-docker-env.lock for too long"

start_dockerd() {
  command -v dockerd >/dev/null 2>&1 || fail "no engine answers and dockerd is missing: install Debian's docker.io (apt-get install docker.io)"
  [ "$(id -u)" = 0 ] || fail "no engine answers on $SOCKET and starting dockerd needs root (start it yourself, or set DOCKER_HOST)"
  # A dockerd of ours that is still starting (or hung): wait for it rather than start another.
  local pid
  if [ -s /var/run/docker.pid ] && pid=$(cat /var/run/docker.pid) && kill -0 "$pid" 2>/dev/null; then
    say "dockerd (pid $pid) is running but does not answer yet; waiting up to ${WAIT}s"
    for _ in $(seq 1 $((WAIT * 4))); do
      engine_answers && return 0
      sleep 0.25
    done
    fail "dockerd (pid $pid) does not answer on $SOCKET after ${WAIT}s; see $LOG"
  fi

  # Storage: overlay2 when the kernel has overlayfs and the data root is not itself on
  # overlayfs (nested overlay fails); else vfs (slow, but works everywhere).
  local storage=vfs
  mkdir -p /var/lib/docker
  if grep -qw overlay /proc/filesystems && [ "$(stat -f -c %T /var/lib/docker)" != overlayfs ]; then
    storage=overlay2
  fi
  local attempts=(
    "--storage-driver=$storage"
    "--storage-driver=vfs"
    "--storage-driver=vfs --iptables=false --ip6tables=false --bridge=none"
  )
  local flags
  for flags in "${attempts[@]}"; do
    say "starting dockerd $flags (log: $LOG)"
    {
      echo "=== $(date -u +%FT%TZ) docker-env.sh: dockerd --host=unix://$SOCKET $flags"
    } >>"$LOG"
    # setsid: the engine outlives the test run that started it; 9>&-: it must not hold our lock.
    # shellcheck disable=SC2086
    setsid dockerd --host="unix://$SOCKET" $flags </dev/null >>"$LOG" 2>&1 9>&- &
    pid=$!
    local i
    for i in $(seq 1 $((WAIT * 4))); do
      if engine_answers; then
        echo "dockerd --host=unix://$SOCKET $flags" >/tmp/remex-dockerd.flags
        say "dockerd (pid $pid) answers after ~$((i / 4))s with: $flags"
        return 0
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    say "dockerd $flags did not come up; last lines of $LOG:"
    tail -5 "$LOG" | sed 's/^/  /' >&2
  done
  fail "could not start dockerd with any of: ${attempts[*]}; see $LOG"
}

build_image() {
  [ -x "$BUSYBOX" ] || fail "$BUSYBOX is missing, so $IMAGE cannot be built: install Debian's busybox-static (apt-get install busybox-static)"
  local root
  root=$(mktemp -d /tmp/remex-busybox-image-XXXXXX)
  trap 'rm -rf "$root"' RETURN
  mkdir -p "$root/bin" "$root/usr/bin" "$root/etc" "$root/tmp" "$root/root" "$root/dev" "$root/proc" "$root/sys"
  chmod 1777 "$root/tmp"
  cp "$BUSYBOX" "$root/bin/busybox"
  chmod 755 "$root/bin/busybox"
  # What `busybox --install -s bin/` does, with relative links: the host's busybox may live
  # under /usr/bin (merged /usr), which the image does not have.
  local applet
  for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] && continue
    ln -s busybox "$root/bin/$applet"
    ln -s ../../bin/busybox "$root/usr/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  if ! tar -C "$root" --numeric-owner --owner=0 --group=0 -c . |
    docker import -c 'CMD ["/bin/sh"]' -m "busybox-static rootfs for remex tests" - "$IMAGE" >/dev/null; then
    fail "docker import of $IMAGE failed"
  fi
  say "built $IMAGE from $BUSYBOX ($("$BUSYBOX" 2>&1 | head -1 | cut -c1-40))"
}

if engine_answers; then
  :
elif [ -n "${DOCKER_HOST:-}" ] && [ "$DOCKER_HOST" != "unix://$SOCKET" ]; then
  fail "DOCKER_HOST=$DOCKER_HOST does not answer (docker info fails); not starting a local dockerd in its place"
else
  start_dockerd
fi

docker image inspect "$IMAGE" >/dev/null 2>&1 || build_image

if ! out=$(timeout 60 docker run --rm --network none "$IMAGE" sh -c 'echo ok' 2>&1) || [ "$out" != ok ]; then
  fail "the engine answers but cannot run a container: docker run --rm --network none $IMAGE sh -c 'echo ok' gave: $out (dockerd log: $LOG)"
fi
say "engine and $IMAGE ready"
