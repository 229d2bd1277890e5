// Package shardcache is a Caddy v2 plugin that serves a directory from RAM
// and, in a cluster, shards it across nodes.
package shardcache
