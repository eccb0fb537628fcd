# shellcheck shell=bash
# Shared by e2e/cluster/{up,down,smoke}; sourced, not run.
#
# A cluster directory holds everything one control plane owns: pki/, etcd/, *.kubeconfig,
# *.log, pids (one "name pid" per line; every pid leads its own process group) and env.

# The marker that says a directory was made by `up`, so `down` may delete it.
# shellcheck disable=SC2034 # used by the scripts that source this file
readonly CLUSTER_MARKER=.collm-cluster
# ...and that its cluster has a real node (up --node), whose leftovers down must sweep.
readonly NODE_MARKER=.collm-node

die() { echo "cluster: $*" >&2; exit 1; }
log() { echo "cluster: $*" >&2; }

# pid_alive PID: true while the process exists and is not a zombie.
pid_alive() {
  local state
  state="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
  [[ "$state" != Z* ]]
}

# stop_all DIR [KEEP]: TERM every process group listed in DIR/pids (last started first) but
# the one named KEEP, wait up to 15 s for them to exit, then KILL whatever is left. Safe to call
# on a half-started cluster.
stop_all() {
  local dir="$1" keep="${2:-}" name pid deadline alive kept=""
  [[ -f "$dir/pids" ]] || return 0
  local -a pids=()
  while read -r name pid; do
    [[ "$pid" =~ ^[0-9]+$ ]] || continue
    if [[ -n "$keep" && "$name" == "$keep" ]]; then kept+="$name $pid"$'\n'; continue; fi
    pids=("$pid" "${pids[@]}")
  done < "$dir/pids"
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  deadline=$((SECONDS + 15))
  while (( SECONDS < deadline )); do
    alive=0
    for pid in "${pids[@]}"; do pid_alive "$pid" && alive=1; done
    (( alive )) || break
    sleep 0.2
  done
  for pid in "${pids[@]}"; do
    if pid_alive "$pid"; then
      log "process group $pid did not stop on TERM; killing it"
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
  done
  if [[ -n "$kept" ]]; then printf '%s' "$kept" > "$dir/pids"; else rm -f "$dir/pids"; fi
}

# pid_of DIR NAME: the process group DIR/pids lists for NAME (empty if none).
pid_of() { awk -v n="$2" '$1 == n { print $2 }' "$1/pids" 2>/dev/null | tail -1; }

# show_log FILE [LINES]: the last lines of a component's log, for an error message.
show_log() {
  local file="$1" lines="${2:-30}"
  echo "---- last $lines lines of $file ----" >&2
  tail -n "$lines" "$file" >&2 2>/dev/null || echo "(no log)" >&2
  echo "----" >&2
}

# node_conditions_json: the node conditions a healthy kubelet posts, stamped now.
node_conditions_json() {
  local now c out=""
  now="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  for c in Ready:True:KubeletReady MemoryPressure:False:KubeletHasSufficientMemory \
           DiskPressure:False:KubeletHasNoDiskPressure PIDPressure:False:KubeletHasSufficientPID; do
    IFS=: read -r type status reason <<<"$c"
    out+="${out:+,}{\"type\":\"$type\",\"status\":\"$status\",\"reason\":\"$reason\","
    out+="\"message\":\"posted by e2e/cluster/fake-kubelets\","
    out+="\"lastHeartbeatTime\":\"$now\",\"lastTransitionTime\":\"$now\"}"
  done
  echo "[$out]"
}
