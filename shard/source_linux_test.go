//go:build linux

package shard

// useOSRoot turns Linux's openat2 fast path off for s: every open then
// goes through os.Root, as on other systems.
func useOSRoot(s *Store) { s.beneath.disabled.Store(true) }
