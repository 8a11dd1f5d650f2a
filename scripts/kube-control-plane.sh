#!/usr/bin/env bash
# A Kubernetes control plane for trying banger hosts as Kubernetes nodes on one
# machine, and for the tests that do the same.
#
#   kube-control-plane.sh DIR                 build kube-apiserver, kube-scheduler,
#                                             kube-controller-manager and kubectl into DIR
#   kube-control-plane.sh DIR up STATEDIR     build if needed, then start etcd and the
#                                             control plane on 127.0.0.1, state in STATEDIR
#   kube-control-plane.sh DIR down STATEDIR   stop what `up` started
#
# The binaries come from the Go module proxy: k8s.io/kubernetes replaces its staging
# modules (k8s.io/api, …) with local paths, so it cannot be built directly. A throw-away
# module in a temp dir requires it and replaces each staging module with the published
# one, read from k8s.io/kubernetes's own go.mod. DIR/stamp records what was built; a run
# whose stamp matches and whose binaries are all there builds nothing.
#
# `up` needs etcd (Debian: apt-get install etcd-server) and openssl. It writes:
#   ca.crt ca.key            cluster CA: the apiserver's --client-ca-file and
#                            --kubelet-certificate-authority, so a node agent signs its
#                            client and serving certs with it (or asks for them through
#                            CertificateSigningRequests, which the controller-manager signs
#                            with it); it signs the control plane's certs too
#   front-proxy-ca.*         the aggregation layer's CA (front-proxy-client.*)
#   admin.kubeconfig         cluster-admin (static token) for kubectl
#   cluster.env              ports and URLs, sourceable by tests
#   *.log *.pid              one per process; etcd data in etcd/
set -euo pipefail

KUBE_VERSION=v1.37.2
# Changing how the binaries are built (flags, list) must bump this so caches rebuild.
RECIPE=1
BINARIES=(kube-apiserver kube-scheduler kube-controller-manager kubectl)
# Ranges handed to the controllers; nodes get a /24 podCIDR each.
CLUSTER_CIDR=10.244.0.0/16
NODE_CIDR_MASK=24
SERVICE_CIDR=10.96.0.0/12
SERVICE_FIRST_IP=10.96.0.1
READY_TIMEOUT=${KUBE_READY_TIMEOUT:-120}

prog=$(basename "$0")

step() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() {
	printf '%s: error: %s\n' "$prog" "$*" >&2
	exit 1
}
usage() {
	cat >&2 <<EOF
usage: $prog DIR                 build the Kubernetes $KUBE_VERSION control-plane binaries into DIR
       $prog DIR up STATEDIR     build if needed, start etcd + control plane, state in STATEDIR
       $prog DIR down STATEDIR   stop the control plane started in STATEDIR
EOF
	exit 2
}

# abspath DIR: DIR made absolute (created if missing).
abspath() {
	mkdir -p -- "$1" || die "cannot create $1: pick a writable directory"
	(cd -- "$1" && pwd -P)
}

# ---------------------------------------------------------------------------
# Building

# go_env prints what decides whether DIR's binaries are current.
go_env() {
	command -v go >/dev/null || die "go not found in PATH: install Go 1.26 or newer (https://go.dev/dl) or add /usr/local/go/bin to PATH"
	GOTOOLCHAIN=local CGO_ENABLED=0 go env GOVERSION GOOS GOARCH
}

build() {
	local dir=$1
	local goenv
	goenv=$(go_env)
	local want
	want=$(printf 'k8s.io/kubernetes %s\nrecipe %s\n%s\n' "$KUBE_VERSION" "$RECIPE" "$goenv")

	if cached "$dir" "$want"; then
		step "Kubernetes $KUBE_VERSION binaries in $dir are current"
		return 0
	fi

	# One builder per DIR at a time; a second one waits and then finds the cache current.
	exec 9>"$dir/.lock"
	if ! flock -n 9; then
		step "waiting for another build into $dir to finish"
		flock 9
	fi
	if cached "$dir" "$want"; then
		step "Kubernetes $KUBE_VERSION binaries in $dir are current"
		exec 9>&-
		return 0
	fi

	local gover=${goenv%%$'\n'*}
	if [[ $gover =~ ^go1\.([0-9]+) ]] && ((BASH_REMATCH[1] < 26)); then
		die "Kubernetes $KUBE_VERSION needs Go 1.26 or newer, this is $gover: install a newer Go (https://go.dev/dl)"
	fi

	# Leftovers of an interrupted run are never trusted: the stamp goes first and is
	# written last, and staging dirs are only ever renamed from.
	rm -f -- "$dir/stamp"
	rm -rf -- "$dir"/.staging.*

	local work stage
	work=$(mktemp -d "${TMPDIR:-/tmp}/banger-kube-build.XXXXXX")
	stage=$(mktemp -d "$dir/.staging.XXXXXX")
	# shellcheck disable=SC2064 # expand now: the paths are local to this function
	trap "rm -rf -- '$work' '$stage'" EXIT
	trap 'exit 130' INT TERM

	export GOTOOLCHAIN=local GOWORK=off GOFLAGS='' CGO_ENABLED=0
	local start=$SECONDS

	step "downloading k8s.io/kubernetes@$KUBE_VERSION"
	local info gomod
	if ! info=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" 2>&1); then
		printf '%s\n' "$info" | tail -n 5 >&2
		die "cannot download k8s.io/kubernetes@$KUBE_VERSION: check network access to GOPROXY ($(go env GOPROXY))"
	fi
	gomod=$(printf '%s\n' "$info" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
	[[ -f $gomod ]] || die "go mod download gave no go.mod for k8s.io/kubernetes@$KUBE_VERSION: run 'go clean -modcache' and retry"

	# Every staging module k8s.io/kubernetes replaces with ./staging/src/… is published
	# at v0.MINOR.PATCH; replace it with that.
	local staging_version=v0.${KUBE_VERSION#v1.}
	local -a staging
	mapfile -t staging < <(awk '
		$1 == "replace" && $2 == "(" { block = 1; next }
		block && $1 == ")" { block = 0; next }
		block && $2 == "=>" && $3 ~ /^\.\/staging\// { print $1 }
		$1 == "replace" && $3 == "=>" && $4 ~ /^\.\/staging\// { print $2 }
	' "$gomod")
	((${#staging[@]} > 0)) || die "found no staging replace lines in $gomod: the layout of k8s.io/kubernetes changed, update $prog"

	{
		printf 'module kbuild\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$KUBE_VERSION"
		local m
		for m in "${staging[@]}"; do
			printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"
		done
		printf ')\n'
	} >"$work/go.mod"
	{
		printf '//go:build tools\n\npackage tools\n\nimport (\n'
		local b
		for b in "${BINARIES[@]}"; do
			printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$b"
		done
		printf ')\n'
	} >"$work/tools.go"

	step "resolving dependencies (go mod tidy, ${#staging[@]} staging modules at $staging_version)"
	if ! (cd "$work" && nice -n 10 go mod tidy) >"$work/tidy.log" 2>&1; then
		tail -n 15 "$work/tidy.log" >&2
		die "go mod tidy failed for the throw-away module (above): check GOPROXY access; if a staging module is missing at $staging_version, update $prog"
	fi

	local minor=${KUBE_VERSION#v1.}
	minor=${minor%%.*}
	local -a ldflags=(-s -w)
	local pkg
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldflags+=(-X "$pkg.gitVersion=$KUBE_VERSION" -X "$pkg.gitMajor=1" -X "$pkg.gitMinor=$minor")
	done
	local -a pkgs=()
	for b in "${BINARIES[@]}"; do
		pkgs+=("k8s.io/kubernetes/cmd/$b")
	done

	step "building ${BINARIES[*]} (about 10 minutes on 2 cores with a cold Go build cache)"
	if ! (cd "$work" && nice -n 10 go build -trimpath -ldflags "${ldflags[*]}" -o "$stage/" "${pkgs[@]}") >"$work/build.log" 2>&1; then
		tail -n 20 "$work/build.log" >&2
		die "go build failed (above): fix the cause and rerun $prog $dir; nothing in $dir was replaced"
	fi

	for b in "${BINARIES[@]}"; do
		[[ -x $stage/$b ]] || die "go build produced no $b: rerun $prog $dir; if it persists, report the Go version ($gover)"
	done
	for b in "${BINARIES[@]}"; do
		mv -f -- "$stage/$b" "$dir/$b"
	done
	printf '%s\n' "$want" >"$dir/.stamp.tmp"
	sync -f "$dir/.stamp.tmp" 2>/dev/null || true
	mv -f -- "$dir/.stamp.tmp" "$dir/stamp"

	rm -rf -- "$work" "$stage"
	trap - EXIT INT TERM
	exec 9>&-
	step "built ${BINARIES[*]} into $dir in $((SECONDS - start))s"
}

# cached DIR WANT: DIR holds every binary and a stamp equal to WANT.
cached() {
	local dir=$1 want=$2 b
	[[ -f $dir/stamp && $(<"$dir/stamp") == "$want" ]] || return 1
	for b in "${BINARIES[@]}"; do
		[[ -x $dir/$b ]] || return 1
	done
}

# ---------------------------------------------------------------------------
# Running

COMPONENTS=(etcd kube-apiserver kube-scheduler kube-controller-manager)

# port_free PORT: no socket uses PORT locally. TIME-WAIT ones do not count: the
# servers set SO_REUSEADDR, and etcd's health checks leave some behind.
port_free() {
	! ss -Htan exclude time-wait "( sport = :$1 )" 2>/dev/null | grep -q .
}

# free_port: an unused TCP port; ports already handed out by this run are skipped.
declare -A taken=()
free_port() {
	local p i
	for ((i = 0; i < 200; i++)); do
		p=$((20000 + RANDOM % 12000))
		[[ -z ${taken[$p]:-} ]] && port_free "$p" && {
			taken[$p]=1
			echo "$p"
			return
		}
	done
	die "found no free TCP port in 20000-31999: free some ports and retry"
}

# http_get PORT PATH: body of a plain-HTTP GET on 127.0.0.1 (etcd has no TLS here).
http_get() {
	local reply
	{
		printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
		reply=$(timeout 2 cat <&3) || true
	} 3<>"/dev/tcp/127.0.0.1/$1" || return 1
	printf '%s\n' "${reply#*$'\r\n\r\n'}"
} 2>/dev/null

# pid_alive STATEDIR NAME: prints the pid of NAME started in STATEDIR if it still runs.
# A pid alone may have been reused: the process must be NAME and mention STATEDIR.
pid_alive() {
	local state=$1 name=$2 pid cmd
	[[ -f $state/$name.pid ]] || return 1
	pid=$(<"$state/$name.pid")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
	[[ $(basename -- "${cmd%% *}") == "$name" && $cmd == *"$state/"* ]] || return 1
	echo "$pid"
}

# start STATEDIR NAME CMD...: runs CMD in its own session, log in STATEDIR/NAME.log.
start() {
	local state=$1 name=$2
	shift 2
	# Its own session: a Ctrl-C in the terminal that ran `up` does not reach it.
	# Not a group leader here, so setsid execs in place and $! is the server's pid.
	setsid "$@" </dev/null >>"$state/$name.log" 2>&1 &
	local pid=$! i
	echo "$pid" >"$state/$name.pid"
	# Until the forked shell has exec'd, /proc shows bash, not NAME.
	for ((i = 0; i < 50; i++)); do
		pid_alive "$state" "$name" >/dev/null && break
		[[ -d /proc/$pid ]] || break
		sleep 0.05
	done
	step "started $name (pid $pid, log $state/$name.log)"
}

# log_tail_die STATEDIR NAME MESSAGE
log_tail_die() {
	printf -- '--- last lines of %s ---\n' "$1/$2.log" >&2
	tail -n 20 "$1/$2.log" >&2 || true
	die "$3"
}

# wait_for STATEDIR NAME DEADLINE CHECK...: until CHECK succeeds; fails fast if NAME exits.
wait_for() {
	local state=$1 name=$2 deadline=$3
	shift 3
	until "$@" >/dev/null 2>&1; do
		pid_alive "$state" "$name" >/dev/null ||
			log_tail_die "$state" "$name" "$name exited during start-up: see $state/$name.log, fix the cause and run up again"
		((SECONDS < deadline)) ||
			log_tail_die "$state" "$name" "$name not ready after ${READY_TIMEOUT}s: see $state/$name.log; on a busy machine raise KUBE_READY_TIMEOUT"
		sleep 0.5
	done
}

etcd_healthy() { [[ $(http_get "$1" /health) == *'"health":"true"'* ]]; }

# kctl ARGS: kubectl as the admin of this control plane.
kctl() { "$BINDIR/kubectl" --kubeconfig "$STATE/admin.kubeconfig" --request-timeout=5s "$@"; }

# healthz PORT: a component's /healthz, TLS verified against the cluster CA.
healthz() { [[ $(kctl --server "https://127.0.0.1:$1" get --raw /healthz) == ok ]]; }

# ---------------------------------------------------------------------------
# Certificates (openssl). Existing files are kept: a restart keeps the identity
# nodes were given.

# new_key FILE: an ECDSA P-256 key.
new_key() {
	[[ -f $1 ]] || openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

# new_ca STATEDIR NAME CN: a self-signed CA, NAME.crt and NAME.key.
new_ca() {
	[[ -f $1/$2.crt ]] && return
	new_key "$1/$2.key"
	openssl req -x509 -new -key "$1/$2.key" -subj "/CN=$3" -days 3650 \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
		-out "$1/$2.crt" 2>/dev/null || die "openssl could not make a CA in $1: check that openssl 3 is installed"
}

# sign STATEDIR CA NAME SUBJECT EXTKEYUSAGE [SAN]: NAME.crt for NAME.key, signed by CA.
sign() {
	local state=$1 ca=$2 name=$3 subj=$4 eku=$5 san=${6:-}
	[[ -f $state/$name.crt ]] && return
	new_key "$state/$name.key"
	local ext
	ext=$(printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=%s\n' "$eku")
	[[ -n $san ]] && ext+=$'\n'"subjectAltName=$san"
	openssl req -new -key "$state/$name.key" -subj "$subj" 2>/dev/null |
		openssl x509 -req -CA "$state/$ca.crt" -CAkey "$state/$ca.key" -set_serial "0x$(openssl rand -hex 16)" \
			-days 3650 -extfile <(printf '%s\n' "$ext") -out "$state/$name.crt" 2>/dev/null ||
		die "openssl could not sign $name.crt in $state: check that openssl 3 is installed"
}

make_certs() {
	local s=$1
	new_ca "$s" ca banger-kubernetes-ca
	# The aggregation layer's CA (kubeadm's front-proxy-ca): with it the apiserver
	# publishes a complete extension-apiserver-authentication config map, which the
	# scheduler and controller-manager read, and aggregated APIs (metrics-server) work.
	new_ca "$s" front-proxy-ca banger-kubernetes-front-proxy-ca
	local local_san="IP:127.0.0.1,DNS:localhost"
	sign "$s" ca apiserver "/CN=kube-apiserver" serverAuth \
		"$local_san,IP:$SERVICE_FIRST_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
	# The apiserver's client cert towards kubelets (logs, exec, port-forward).
	sign "$s" ca apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client" clientAuth
	sign "$s" ca kube-scheduler-serving "/CN=kube-scheduler" serverAuth "$local_san"
	sign "$s" ca kube-controller-manager-serving "/CN=kube-controller-manager" serverAuth "$local_san"
	sign "$s" front-proxy-ca front-proxy-client "/CN=front-proxy-client" clientAuth
	if [[ ! -f $s/sa.key ]]; then
		openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$s/sa.key" 2>/dev/null
		openssl pkey -in "$s/sa.key" -pubout -out "$s/sa.pub" 2>/dev/null
	fi
	if [[ ! -f $s/tokens.csv ]]; then
		# token,user,uid,"groups"; the scheduler and controller-manager users are the
		# ones the built-in RBAC roles name.
		printf '%s,admin,admin,"system:masters"\n' "$(openssl rand -hex 32)" >"$s/tokens.csv"
		printf '%s,system:kube-scheduler,system:kube-scheduler\n' "$(openssl rand -hex 32)" >>"$s/tokens.csv"
		printf '%s,system:kube-controller-manager,system:kube-controller-manager\n' "$(openssl rand -hex 32)" >>"$s/tokens.csv"
	fi
}

# kubeconfig STATEDIR USER FILE
kubeconfig() {
	local s=$1 user=$2 file=$3 token
	token=$(awk -F, -v u="$user" '$2 == u { print $1 }' "$s/tokens.csv")
	cat >"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: banger
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 "$s/ca.crt")
users:
- name: $user
  user:
    token: $token
contexts:
- name: banger
  context:
    cluster: banger
    user: $user
current-context: banger
EOF
	mv -f -- "$file.tmp" "$file"
}

# pick_ports STATEDIR: ports from a previous `up` when still free (nodes keep their
# kubeconfig), new ones otherwise.
pick_ports() {
	local s=$1 var
	ETCD_PORT='' ETCD_PEER_PORT='' APISERVER_PORT='' SCHEDULER_PORT='' CONTROLLER_MANAGER_PORT=''
	# shellcheck disable=SC1091 # written by us
	[[ -f $s/cluster.env ]] && source "$s/cluster.env"
	for var in ETCD_PORT ETCD_PEER_PORT APISERVER_PORT SCHEDULER_PORT CONTROLLER_MANAGER_PORT; do
		if [[ -n ${!var} ]] && [[ -z ${taken[${!var}]:-} ]] && port_free "${!var}"; then
			taken[${!var}]=1
		else
			printf -v "$var" '%s' "$(free_port)"
			taken[${!var}]=1
		fi
	done
	cat >"$s/cluster.env.tmp" <<EOF
# Written by kube-control-plane.sh up; sourceable.
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
SCHEDULER_PORT=$SCHEDULER_PORT
CONTROLLER_MANAGER_PORT=$CONTROLLER_MANAGER_PORT
APISERVER_URL=https://127.0.0.1:$APISERVER_PORT
KUBECONFIG=$s/admin.kubeconfig
CA_CERT=$s/ca.crt
CA_KEY=$s/ca.key
CLUSTER_CIDR=$CLUSTER_CIDR
SERVICE_CIDR=$SERVICE_CIDR
EOF
	mv -f -- "$s/cluster.env.tmp" "$s/cluster.env"
}

up() {
	local s=$STATE
	command -v etcd >/dev/null || die "etcd not found: install it (Debian: sudo apt-get install etcd-server) and rerun"
	command -v openssl >/dev/null || die "openssl not found: install it (Debian: sudo apt-get install openssl) and rerun"
	command -v ss >/dev/null || die "ss not found: install iproute2 and rerun"
	local name pid
	for name in "${COMPONENTS[@]}"; do
		if pid=$(pid_alive "$s" "$name"); then
			die "$name from $s is already running (pid $pid): use it (export KUBECONFIG=$s/admin.kubeconfig) or stop it with: $prog $BINDIR down $s"
		fi
	done

	build "$BINDIR"
	local start=$SECONDS deadline=$((SECONDS + READY_TIMEOUT))
	# Whatever we started is stopped again if `up` does not finish.
	trap 'step "start-up failed; stopping what was started"; stop_all "$STATE"' EXIT

	umask 077
	make_certs "$s"
	pick_ports "$s"
	kubeconfig "$s" admin "$s/admin.kubeconfig"
	kubeconfig "$s" system:kube-scheduler "$s/kube-scheduler.kubeconfig"
	kubeconfig "$s" system:kube-controller-manager "$s/kube-controller-manager.kubeconfig"
	step "certificates and kubeconfigs in $s"

	local etcd_url=http://127.0.0.1:$ETCD_PORT peer_url=http://127.0.0.1:$ETCD_PEER_PORT
	start "$s" etcd etcd --name=banger --data-dir="$s/etcd" \
		--listen-client-urls="$etcd_url" --advertise-client-urls="$etcd_url" \
		--listen-peer-urls="$peer_url" --initial-advertise-peer-urls="$peer_url" \
		--initial-cluster="banger=$peer_url"
	wait_for "$s" etcd "$deadline" etcd_healthy "$ETCD_PORT"
	step "etcd healthy on 127.0.0.1:$ETCD_PORT"

	start "$s" kube-apiserver "$BINDIR/kube-apiserver" \
		--etcd-servers="$etcd_url" \
		--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
		--endpoint-reconciler-type=none \
		--tls-cert-file="$s/apiserver.crt" --tls-private-key-file="$s/apiserver.key" \
		--client-ca-file="$s/ca.crt" --token-auth-file="$s/tokens.csv" \
		--service-account-key-file="$s/sa.pub" --service-account-signing-key-file="$s/sa.key" \
		--service-account-issuer=https://kubernetes.default.svc \
		--service-cluster-ip-range="$SERVICE_CIDR" \
		--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
		--allow-privileged=true \
		--requestheader-client-ca-file="$s/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
		--requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
		--requestheader-extra-headers-prefix=X-Remote-Extra- \
		--proxy-client-cert-file="$s/front-proxy-client.crt" --proxy-client-key-file="$s/front-proxy-client.key" \
		--kubelet-client-certificate="$s/apiserver-kubelet-client.crt" \
		--kubelet-client-key="$s/apiserver-kubelet-client.key" \
		--kubelet-certificate-authority="$s/ca.crt" \
		--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname
	wait_for "$s" kube-apiserver "$deadline" kctl get --raw /readyz
	step "kube-apiserver ready on https://127.0.0.1:$APISERVER_PORT ($((SECONDS - start))s)"

	start "$s" kube-scheduler "$BINDIR/kube-scheduler" \
		--kubeconfig="$s/kube-scheduler.kubeconfig" \
		--authentication-kubeconfig="$s/kube-scheduler.kubeconfig" \
		--authorization-kubeconfig="$s/kube-scheduler.kubeconfig" \
		--bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" \
		--tls-cert-file="$s/kube-scheduler-serving.crt" --tls-private-key-file="$s/kube-scheduler-serving.key" \
		--leader-elect=false
	start "$s" kube-controller-manager "$BINDIR/kube-controller-manager" \
		--kubeconfig="$s/kube-controller-manager.kubeconfig" \
		--authentication-kubeconfig="$s/kube-controller-manager.kubeconfig" \
		--authorization-kubeconfig="$s/kube-controller-manager.kubeconfig" \
		--bind-address=127.0.0.1 --secure-port="$CONTROLLER_MANAGER_PORT" \
		--tls-cert-file="$s/kube-controller-manager-serving.crt" --tls-private-key-file="$s/kube-controller-manager-serving.key" \
		--leader-elect=false --use-service-account-credentials \
		--service-account-private-key-file="$s/sa.key" --root-ca-file="$s/ca.crt" \
		--cluster-signing-cert-file="$s/ca.crt" --cluster-signing-key-file="$s/ca.key" \
		--allocate-node-cidrs --cluster-cidr="$CLUSTER_CIDR" --node-cidr-mask-size="$NODE_CIDR_MASK" \
		--node-monitor-grace-period="${KUBE_NODE_MONITOR_GRACE:-50s}" \
		--service-cluster-ip-range="$SERVICE_CIDR"
	wait_for "$s" kube-scheduler "$deadline" healthz "$SCHEDULER_PORT"
	wait_for "$s" kube-controller-manager "$deadline" healthz "$CONTROLLER_MANAGER_PORT"

	# What kubeadm grants: the apiserver's kubelet client may use the kubelet API
	# (a node agent that authorizes with SubjectAccessReview finds it allowed).
	kctl create clusterrolebinding kube-apiserver-kubelet-api-admin --clusterrole=system:kubelet-api-admin \
		--user=kube-apiserver-kubelet-client >/dev/null 2>&1 ||
		kctl get clusterrolebinding kube-apiserver-kubelet-api-admin >/dev/null ||
		die "cannot create the clusterrolebinding for the apiserver's kubelet client: see $s/kube-apiserver.log"

	trap - EXIT
	step "control plane ready in $((SECONDS - start))s: export KUBECONFIG=$s/admin.kubeconfig; stop with: $prog $BINDIR down $s"
}

# stop_all STATEDIR: TERM the Kubernetes components together, then etcd (last, so the
# apiserver shuts down cleanly); KILL whatever ignores TERM for 15 s.
stop_all() {
	local s=$1 stopped=0
	stop_group "$s" kube-controller-manager kube-scheduler kube-apiserver
	stop_group "$s" etcd
	((stopped > 0)) || step "nothing from $s was running"
}

# stop_group STATEDIR NAME...: stops the named components of STATEDIR in parallel.
stop_group() { # counts into stop_all's "stopped"
	local s=$1 name pid n
	shift
	local -A pids=()
	for name in "$@"; do
		if pid=$(pid_alive "$s" "$name"); then
			kill -TERM "$pid" 2>/dev/null || true
			pids[$name]=$pid
		else
			rm -f -- "$s/$name.pid"
		fi
	done
	for name in "${!pids[@]}"; do
		pid=${pids[$name]}
		for ((n = 0; n < 150; n++)); do
			[[ -d /proc/$pid ]] || break
			sleep 0.1
		done
		if [[ -d /proc/$pid ]]; then
			kill -KILL "$pid" 2>/dev/null || true
			step "killed $name (pid $pid): it ignored SIGTERM for 15s"
		else
			step "stopped $name (pid $pid)"
		fi
		rm -f -- "$s/$name.pid"
		stopped=$((stopped + 1))
	done
}

# ---------------------------------------------------------------------------

[[ $# -ge 1 && -n $1 ]] || usage
BINDIR=$(abspath "$1")
case "${2:-build}" in
build)
	[[ $# -le 2 ]] || usage
	build "$BINDIR"
	;;
up)
	[[ $# -eq 3 && -n $3 ]] || usage
	STATE=$(abspath "$3")
	up
	;;
down)
	[[ $# -eq 3 && -n $3 ]] || usage
	[[ -d $3 ]] || die "no state directory $3: nothing to stop"
	STATE=$(cd -- "$3" && pwd -P)
	stop_all "$STATE"
	;;
*)
	usage
	;;
esac
