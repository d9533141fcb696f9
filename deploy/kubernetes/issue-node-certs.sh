#!/usr/bin/env bash
# Issues one agent certificate per Kubernetes node (agent id = node name) for PoP $1, using the
# CA in $2, and stores them all in the Secret edgecap-agent-tls (keys NODE.pem, NODE-key.pem).
set -euo pipefail
pop="$1"; pki="${2:-pki}"
args=(--from-file=ca.pem="$pki/ca.pem")
for node in $(kubectl get nodes -o jsonpath='{.items[*].metadata.name}'); do
  edgecap pki issue --dir "$pki" --agent "$node" --pop "$pop" >/dev/null
  args+=(--from-file="$node.pem=$pki/agent-$node.pem" --from-file="$node-key.pem=$pki/agent-$node-key.pem")
done
kubectl -n edgecap create secret generic edgecap-agent-tls "${args[@]}" --dry-run=client -o yaml | kubectl apply -f -
