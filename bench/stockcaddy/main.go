// Command stockcaddy is stock Caddy (standard modules only, no shardcache),
// built by bench/run.sh with the same flags as ./cmd/caddy so the two
// binaries can be compared.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func main() {
	caddycmd.Main()
}
