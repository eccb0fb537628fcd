# shellcheck shell=bash
# The real node of `e2e/cluster/up --node`: containerd, a kubelet, kube-proxy, a bridge CNI
# network and CoreDNS. Sourced by up and down (after lib.sh), not run.
#
# One node per machine: the bridge, the routes and kube-proxy's iptables chains are the host's,
# so a machine-wide lock (NODE_LOCK) admits one real-node cluster at a time; a second `up --node`
# waits for it (COLLM_NODE_LOCK_TIMEOUT seconds, default 1800).
#
# Addresses: the node is 10.244.0.1, the gateway of bridge collm0; pods get 10.244.0.0/24;
# Services 10.96.0.0/16 (cluster DNS 10.96.0.10). Nothing of the cluster leaves this machine:
# pods get no masquerading and a FORWARD rule drops what they send to anything but the bridge,
# the Service range is routed onto the bridge (so a ClusterIP that kube-proxy has not programmed
# yet goes nowhere instead of out of the default route), and CoreDNS answers cluster.local only
# (no upstream resolver).

# shellcheck disable=SC2034 # used by the scripts that source this file
readonly NODE_NAME=node-1
readonly NODE_BRIDGE=collm0
readonly NODE_IP=10.244.0.1
readonly POD_SUBNET=10.244.0.0/24
readonly SERVICE_CIDR=10.96.0.0/16
readonly CLUSTER_DNS_IP=10.96.0.10
readonly NODE_LABELS=collm.dev/edge=true,collm.dev/cloud=true
readonly NODE_LOCK=/run/lock/collm-e2e-node.lock
# The FORWARD chain that keeps pod traffic on the bridge.
readonly NODE_FORWARD_CHAIN=COLLM-E2E-FORWARD

# node_preflight: what the node needs on this machine, with the Debian package to install.
node_preflight() {
  [[ "$(id -u)" == 0 ]] || die "--node needs root (containerd, kubelet, iptables)"
  local tool pkg
  for tool in containerd:containerd ctr:containerd runc:runc iptables:iptables ip:iproute2 \
              flock:util-linux findmnt:util-linux; do
    pkg="${tool#*:}" tool="${tool%%:*}"
    command -v "$tool" >/dev/null || die "$tool is not installed (Debian package $pkg)"
  done
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] ||
    die "CNI plugins missing in /usr/lib/cni (Debian package containernetworking-plugins)"
  [[ -d /proc/sys/net/bridge ]] ||
    die "the kernel has no bridge netfilter (br_netfilter): Services could not reach pods"
}

# node_lock DIR: take the machine's real-node lock for the cluster in DIR. A process that
# holds the lock file open (listed in DIR/pids as node-lock) keeps it until down stops it.
node_lock() {
  local dir="$1" limit="${COLLM_NODE_LOCK_TIMEOUT:-1800}"
  mkdir -p "$(dirname "$NODE_LOCK")"
  exec 8>>"$NODE_LOCK"
  if ! flock -n 8; then
    log "waiting up to ${limit}s for the real node of another cluster ($(cat "$NODE_LOCK.owner" 2>/dev/null || echo unknown)) to go down"
    flock -w "$limit" 8 || die "the real node is still taken after ${limit}s ($NODE_LOCK)"
  fi
  echo "$dir" > "$NODE_LOCK.owner"
  setsid sleep infinity >/dev/null 2>&1 </dev/null &
  echo "node-lock $!" >> "$dir/pids"
  exec 8>&-
}

# node_sweep DIR BIN: remove what a real node leaves on the host (its bridge, route, firewall
# rules and kube-proxy's chains, pod network namespaces, kubelet cgroups). Run by down after
# every process is gone, and by up before it starts (a cluster whose processes were killed
# leaves these behind). Only under the node lock.
node_sweep() {
  # A subshell without errexit: every step is best effort, and one that finds nothing to remove
  # must not stop the others.
  ( set +e +o pipefail; node_sweep_steps "$@" )
}
node_sweep_steps() {
  local dir="$1" bin="$2" ns c table rule
  if [[ -x "$bin/kube-proxy" ]]; then
    "$bin/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  # The kubelet's own canary and hint chains, and the portmap plugin's hostPort chains.
  for table in filter nat mangle; do
    iptables-save -t "$table" 2>/dev/null | sed -n 's/^:\(\(KUBE\|CNI-HOSTPORT\|CNI-DN\)-[A-Za-z0-9_-]*\) .*/\1/p' |
      while read -r c; do
        iptables-save -t "$table" | grep -- "-j $c\b" | sed 's/^-A/-D/' |
          while read -r rule; do eval "iptables -t $table $rule" 2>/dev/null || true; done
        iptables -t "$table" -F "$c" 2>/dev/null || true
      done
    iptables-save -t "$table" 2>/dev/null | sed -n 's/^:\(\(KUBE\|CNI-HOSTPORT\|CNI-DN\)-[A-Za-z0-9_-]*\) .*/\1/p' |
      while read -r c; do iptables -t "$table" -X "$c" 2>/dev/null || true; done
  done
  while iptables -D FORWARD -j "$NODE_FORWARD_CHAIN" 2>/dev/null; do :; done
  iptables -F "$NODE_FORWARD_CHAIN" 2>/dev/null || true
  iptables -X "$NODE_FORWARD_CHAIN" 2>/dev/null || true
  # Network namespaces of pod sandboxes that nothing runs in any more.
  for ns in /run/netns/cni-*; do
    [[ -e "$ns" ]] || continue
    [[ -z "$(ip netns pids "$(basename "$ns")" 2>/dev/null)" ]] || continue
    umount "$ns" 2>/dev/null || true
    rm -f "$ns"
  done
  ip route del "$SERVICE_CIDR" dev "$NODE_BRIDGE" 2>/dev/null || true
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
  # veths whose pod is gone vanish with its namespace; one left on the bridge is removed here.
  ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 |
    while read -r c; do
      [[ "$(cat "/sys/class/net/$c/master/uevent" 2>/dev/null)" == *"INTERFACE=$NODE_BRIDGE"* ]] &&
        ip link del "$c" 2>/dev/null
    done
  # The kubelet's QoS cgroups (pods' own are gone with their containers).
  for c in /sys/fs/cgroup/*/kubepods; do
    [[ -d "$c" ]] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  if [[ -f "$dir/ip_forward.saved" ]]; then
    cat "$dir/ip_forward.saved" > /proc/sys/net/ipv4/ip_forward
    rm -f "$dir/ip_forward.saved"
  fi
  return 0
}

# node_unmount DIR: unmount everything under DIR (pods' volumes the kubelet mounted, sandbox
# shm, container root filesystems), deepest first.
node_unmount() {
  local dir="$1" m
  findmnt -rn -o TARGET | grep -F "$dir/" | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
  done
}

# node_network_up DIR: the bridge with the node's address, the Service route and the firewall
# rule that keeps pod traffic on this machine.
node_network_up() {
  local dir="$1"
  cat /proc/sys/net/ipv4/ip_forward > "$dir/ip_forward.saved"
  ip link add "$NODE_BRIDGE" type bridge
  ip addr add "$NODE_IP/${POD_SUBNET#*/}" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  ip route add "$SERVICE_CIDR" dev "$NODE_BRIDGE"
  iptables -N "$NODE_FORWARD_CHAIN"
  iptables -A "$NODE_FORWARD_CHAIN" -s "$POD_SUBNET" ! -o "$NODE_BRIDGE" -j DROP \
    -m comment --comment "collm e2e: pod traffic stays on this machine"
  iptables -I FORWARD -j "$NODE_FORWARD_CHAIN"
  # The bridge plugin turns forwarding on (the node routes between pods and Services).
  mkdir -p "$dir/cni/net.d" "$dir/cni/ipam"
  cat > "$dir/cni/net.d/10-collm.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "collm-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$dir/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

# node_containerd_config DIR PAUSE_IMAGE: containerd with its own root, state and socket in DIR.
node_containerd_config() {
  local dir="$1" pause="$2"
  mkdir -p "$dir/containerd"
  cat > "$dir/containerd/config.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "$dir/containerd/containerd.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  # The pause image is built here (tools/build-images pause) and imported before the kubelet
  # starts; nothing is ever pulled.
  sandbox_image = "$pause"
  # Lowering a container's oom_score_adj below the runtime's needs CAP_SYS_RESOURCE, which this
  # machine does not grant: without this every sandbox dies in runc.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
EOF
}

# node_ctr DIR ARGS...: ctr against the node's containerd, in the kubelet's namespace.
node_ctr() {
  local dir="$1"
  shift
  ctr --address "$dir/containerd/containerd.sock" --namespace k8s.io "$@"
}

# node_import DIR ARCHIVE...: import OCI archives (tools/build-images) into the node's
# containerd, under the names the archives carry.
node_import() {
  local dir="$1" archive
  shift
  for archive in "$@"; do
    node_ctr "$dir" images import "$archive" >/dev/null ||
      die "importing $archive into containerd failed"
  done
}

# node_kubelet_config DIR KUBELET_PORT HEALTHZ_PORT: the kubelet's configuration. The machine
# has cgroups v1, swap may be on, and there is no systemd: cgroupfs, no swap check, v1 allowed.
node_kubelet_config() {
  local dir="$1" port="$2" healthz="$3"
  mkdir -p "$dir/kubelet" "$dir/pod-logs"
  # Pods with dnsPolicy Default get no upstream resolver: nothing of the cluster asks a DNS
  # server outside it.
  echo "# e2e/cluster/up --node: no upstream DNS" > "$dir/resolv.conf"
  cat > "$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz
tlsCertFile: $dir/pki/kubelet-server.crt
tlsPrivateKeyFile: $dir/pki/kubelet-server.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $dir/pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$dir/containerd/containerd.sock
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
clusterDNS: [$CLUSTER_DNS_IP]
clusterDomain: cluster.local
resolvConf: $dir/resolv.conf
podLogsDir: $dir/pod-logs
maxPods: 110
# A shared CI disk can be fuller than the defaults allow: no eviction or image garbage
# collection for disk (the imported images cannot be pulled again).
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
}

# node_kube_proxy_config DIR HEALTHZ_PORT METRICS_PORT: iptables mode; conntrack sysctls are
# left as they are (0 = do not touch), NodePorts only on the node's bridge address.
node_kube_proxy_config() {
  local dir="$1" healthz="$2" metrics="$3"
  cat > "$dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $dir/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_SUBNET
nodePortAddresses: ["$NODE_IP/32"]
healthzBindAddress: 127.0.0.1:$healthz
metricsBindAddress: 127.0.0.1:$metrics
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {masqueradeAll: false, syncPeriod: 10s, minSyncPeriod: 0s}
EOF
}

# node_coredns_manifest IMAGE: cluster DNS as kubeadm deploys it (kube-system/coredns, Service
# kube-dns at CLUSTER_DNS_IP), listening on 1053 so it runs as non-root without capabilities.
node_coredns_manifest() {
  sed -e "s|@IMAGE@|$1|g" -e "s|@CLUSTER_DNS_IP@|$CLUSTER_DNS_IP|g" "$here/node/coredns.yaml"
}

# node_drain DIR: let the kubelet take every pod down as it would (containers stopped, sandbox
# networks deleted through CNI, volumes unmounted): stop the controllers that would replace the
# pods, delete them all, and wait (bounded) until containerd runs no task and no pod volume is
# mounted.
node_drain() {
  local dir="$1" deadline pid
  [[ -S "$dir/containerd/containerd.sock" && -f "$dir/admin.kubeconfig" ]] || return 0
  for name in kube-controller-manager kube-scheduler; do
    pid="$(pid_of "$dir" "$name")"
    [[ -n "$pid" ]] && kill -TERM -- "-$pid" 2>/dev/null
  done
  pid="$(pid_of "$dir" kubelet)"
  [[ -n "$pid" ]] && pid_alive "$pid" || return 0
  kubectl --kubeconfig="$dir/admin.kubeconfig" --request-timeout=10s delete pods --all \
    --all-namespaces --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
  deadline=$((SECONDS + ${COLLM_NODE_DRAIN_TIMEOUT:-60}))
  while (( SECONDS < deadline )); do
    if [[ -z "$(node_ctr "$dir" tasks ls -q 2>/dev/null)" ]] &&
       ! findmnt -rn -o TARGET | grep -qF "$dir/kubelet/pods/"; then
      return 0
    fi
    sleep 0.5
  done
  log "pods still running or mounted after the drain; stopping them by force"
}

# node_kill_leftovers DIR: after containerd is gone, the shims it started and any container
# process still alive (a drain that did not finish). Shims are found by the socket of this
# cluster's containerd; container processes by the kubelet's cgroups.
node_kill_leftovers() {
  local dir="$1" pid procs
  for pid in $(pgrep -f -- "containerd-shim-runc-v2 .*-address $dir/containerd/containerd.sock" || true); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  for procs in /sys/fs/cgroup/*/kubepods; do
    [[ -d "$procs" ]] || continue
    find "$procs" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u |
      while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done
  done
  return 0
}

# node_teardown DIR BIN: take a real node down and leave nothing of it on the host: no process,
# mount, iptables rule, route, bridge or veth. The node lock is released last.
node_teardown() {
  local dir="$1" bin="$2"
  # Without the lock (up failed waiting for it) the host's node belongs to another cluster.
  [[ -n "$(pid_of "$dir" node-lock)" ]] || { stop_all "$dir"; return 0; }
  # Each step is best effort (|| true also lifts errexit inside it): one that fails must not
  # keep the next from removing what it can.
  node_drain "$dir" || true
  stop_all "$dir" node-lock
  node_kill_leftovers "$dir" || true
  node_unmount "$dir" || true
  node_sweep "$dir" "$bin"
  rm -f "$NODE_LOCK.owner"
  stop_all "$dir"
}
