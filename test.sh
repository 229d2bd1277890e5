#!/bin/sh
# The whole test suite; CI runs exactly this (plus go vet, see .ci/run).
set -eu
cd "$(dirname "$0")"

# Every build uses xcaddy's flags (and the race builds cgo), so that the
# build cache is shared between the steps and with the Caddy binaries the
# integration tests build.
FLAGS="-trimpath -tags nobadger,nomysql,nopgx"

# shard/, peering/, cluster/, spread/ and the root package need no Caddy process:
# their tests run in seconds, with the race detector.
CGO_ENABLED=1 go test -race -count=1 $FLAGS . ./shard/... ./peering/... ./cluster/... ./spread/...

# Real Caddy processes (caddytest/ builds the binary it runs), and the
# rest of the module.
CGO_ENABLED=0 go test -count=1 $FLAGS \
	$(go list ./... | grep -vE '/(shard|peering|cluster|spread)$' | grep -v '^github.com/shardcache/caddy-shardcache$')

# The cluster, chunk and fault tests once more on a Caddy built with the
# race detector: a node that reports a data race fails its test.
SHARDCACHE_RACE=1 CGO_ENABLED=0 go test -count=1 $FLAGS -run 'TestCluster|TestChunk|TestFault' ./caddytest/
