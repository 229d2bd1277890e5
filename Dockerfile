# Caddy with the shardcache plugin, on the pattern Caddy documents for
# plugins (https://hub.docker.com/_/caddy, "Adding custom Caddy modules"):
# build with xcaddy in caddy:<version>-builder, copy the binary into
# caddy:<version>. From the repository root (the build context):
#
#	docker build -t caddy-shardcache .
#
# examples/compose/compose.yaml builds this file.
#
# Go version: go.mod says `go 1.26.0`. caddy:2.11.9-builder is FROM
# golang:1.26-alpine (caddy-docker's 2.11/builder/Dockerfile, which also
# pins xcaddy v0.4.5), so it has a new enough Go and we use it as it is.
# Like every official golang image it sets GOTOOLCHAIN=local: a Go older
# than go.mod asks for fails at once ("go.mod requires go >= 1.26.0
# (running go 1.25.x; GOTOOLCHAIN=local)") instead of fetching a toolchain.
# If you build with an older builder tag, either pass
# --build-arg GOTOOLCHAIN=auto (the go command downloads Go 1.26 from
# proxy.golang.org during the build), or use golang:1.26 as the builder:
#
#	FROM golang:1.26-alpine AS builder
#	RUN go install github.com/caddyserver/xcaddy/cmd/xcaddy@v0.4.5
#
# and keep the rest of this stage.

ARG CADDY_IMAGE_VERSION=2.11.9

FROM caddy:${CADDY_IMAGE_VERSION}-builder AS builder
ARG GOTOOLCHAIN=local
ENV GOTOOLCHAIN=${GOTOOLCHAIN} CGO_ENABLED=0
# The Caddy of go.mod (the builder's own CADDY_VERSION may be older).
ARG CADDY_VERSION=v2.11.9
WORKDIR /src
# Dependencies first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# xcaddy leaves out the badger, mysql and pgx storage drivers by default
# (the nobadger,nomysql,nopgx tags the tests build with).
RUN xcaddy build ${CADDY_VERSION} \
		--with github.com/shardcache/caddy-shardcache=. \
		--output /usr/bin/caddy \
	&& /usr/bin/caddy list-modules | grep -qx shardcache

FROM caddy:${CADDY_IMAGE_VERSION}
COPY --from=builder /usr/bin/caddy /usr/bin/caddy
# The sites (HTTP, HTTPS, HTTP/3) and the SAN address (peering: QUIC over
# UDP, `node <name> <host>:7946`). The admin API (2019) stays on localhost
# inside the container, as in caddy:2.11.9.
EXPOSE 80 443 443/udp 7946/udp
# caddy:2.11.9's CMD: caddy run --config /etc/caddy/Caddyfile --adapter caddyfile
