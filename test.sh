#!/bin/sh
# The whole test suite; CI runs exactly this (plus go vet, see .ci/run).
set -eu
cd "$(dirname "$0")"

# shard/, peering/, cluster/ and the root package need no Caddy process:
# their tests run in seconds, with the race detector (which needs cgo).
CGO_ENABLED=1 go test -race -count=1 . ./shard/... ./peering/... ./cluster/...

# caddytest/ with xcaddy's build flags: it builds the Caddy binary it runs
# with the very same flags, so the build cache is shared.
CGO_ENABLED=0 go test -count=1 -trimpath -tags nobadger,nomysql,nopgx \
	$(go list ./... | grep -vE '/(shard|peering|cluster)$' | grep -v '^github.com/shardcache/caddy-shardcache$')
