//go:build linux

package shard

import (
	"syscall"
	"time"
)

// useOSRoot turns Linux's openat2 fast path off for s: every open then
// goes through os.Root, as on other systems.
func useOSRoot(s *Store) { s.beneath.disabled.Store(true) }

// cpuTime is the CPU time (user and system) the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
