//go:build !linux

package shard

func useOSRoot(*Store) {}
