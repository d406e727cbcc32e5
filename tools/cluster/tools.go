//go:build tools

// Package tools pins the Kubernetes commands `go build` makes for the test harness: the control plane
// (kube-apiserver) and, for the real node, the kubelet, kube-controller-manager, kube-scheduler and kube-proxy.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
