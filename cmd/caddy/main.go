// Command caddy is Caddy with the shardcache modules plugged in: the same
// binary `xcaddy build --with github.com/shardcache/caddy-shardcache` makes,
// without needing xcaddy. The tests and the README's demo build it.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/shardcache/caddy-shardcache"
)

func main() {
	caddycmd.Main()
}
