//go:build tools

// Package tools pins the KServe module this directory builds its controller from.
package tools

import _ "github.com/kserve/kserve/pkg/apis/serving/v1beta1"
