#!/bin/sh
# The whole test suite; CI runs exactly this (plus go vet, see .ci/run).
set -eu
cd "$(dirname "$0")"

# shard/ and peering/ import no Caddy: their unit tests run in seconds, with
# the race detector (which needs cgo).
CGO_ENABLED=1 go test -race -count=1 ./shard/... ./peering/...

# Everything else with xcaddy's build flags: caddytest/ builds the Caddy
# binary it runs with the very same flags, so the build cache is shared.
CGO_ENABLED=0 go test -count=1 -trimpath -tags nobadger,nomysql,nopgx \
	$(go list ./... | grep -vE '/(shard|peering)$')
