# Shared by the benchmarks: build, start virtd on a private state directory, always stop it (and any
# QEMU it started) at the end. Source it after setting `bench` (the benchmark's name) and `port`.
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
base="http://127.0.0.1:$port"
pid=""
tmp=$(mktemp -d /tmp/virtd-bench.XXXXXX)
# virtd-qemu reads the pool's images by path (qemu-img info): it must be able to pass through mktemp's 0700 directory.
chmod 0711 "$tmp"

die() { echo "bench/$bench: $*" >&2; exit 1; }

# kill_vms RUN_DIRECTORY: SIGKILL every QEMU that the daemon of that run directory started (QEMU's argv names no
# path; its environment carries VIRTD_RUN_DIRECTORY).
kill_vms() {
  local p
  for p in /proc/[0-9]*; do
    if { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qxF "VIRTD_RUN_DIRECTORY=$1"; then kill -KILL "${p#/proc/}" 2>/dev/null || true; fi
  done
}

bench_cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done   # ≤ 10 s
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  # VMs outlive the daemon by design: end the ones this benchmark started.
  kill_vms "$tmp/run"
  rm -rf "$tmp"
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

# bench_build [extra projects...]: the daemon in Release, and whatever else the benchmark runs.
bench_build() {
  echo "== build (Release)"
  for project in src/Virtd.Api "$@"; do
    dotnet build "$project" -c Release -nologo -v quiet >/dev/null || die "build of $project failed; run: dotnet build $project -c Release"
  done
}

# bench_start_daemon [daemon args...]: starts virtd on $base and waits until it is ready.
bench_start_daemon() {
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then die "port $port is already in use (set VIRTD_BENCH_PORT)"; fi
  echo "== starting virtd on $base ($*)"
  dotnet src/Virtd.Api/bin/Release/net10.0/virtd.dll --urls "$base" --StateDirectory "$tmp/state" --RunDirectory "$tmp/run" \
    "$@" >"$tmp/daemon.log" 2>&1 &
  pid=$!
  local deadline=$((SECONDS + 60))
  until curl -fsS -o /dev/null "$base/readyz" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$tmp/daemon.log" >&2; die "the daemon exited during start-up"; }
    [ "$SECONDS" -lt "$deadline" ] || die "not ready after 60 s"
    sleep 0.1
  done
  token_file="$tmp/state/initial-admin-token"
  auth="Authorization: Bearer $(cat "$token_file")"
}

# bench_need_wrk: wrk from Debian when it is missing (as root).
bench_need_wrk() {
  if ! command -v wrk >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] || die "wrk is missing; install it (apt-get install wrk) or run as root"
    echo "== installing wrk"
    timeout 300 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq --no-install-recommends wrk >/dev/null
  fi
}

# cpu_ticks [PID]: user + system CPU of PID (default: the daemon, $pid) in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/${1:-$pid}/stat"; }

# api [curl args...]: curl with the daemon's admin token (after bench_start_daemon).
api() { curl -H "$auth" "$@"; }

bench_log_errors() {
  if grep -qiE '\b(fail|crit|error)' "$tmp/daemon.log"; then
    echo "daemon log has errors:"; grep -iE '\b(fail|crit|error)' "$tmp/daemon.log" | head -n 10
  fi
}
