//go:build !linux

package shard

import "time"

func useOSRoot(*Store) {}

func cpuTime() time.Duration { return 0 }
