// The pod sandbox ("pause") process for the test node's containerd (scripts/cluster-tools.sh). Not part of the product.
module shepherd.local/tools/pause

go 1.24
