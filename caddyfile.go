package shardcache

import (
	"github.com/dustin/go-humanize"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("shardcache", parseCaddyfile)
	// It answers requests from files, like file_server, and with pass_thru
	// it hands misses on to whatever comes next, file_server included.
	httpcaddyfile.RegisterDirectiveOrder("shardcache", httpcaddyfile.Before, "file_server")
}

// parseCaddyfile sets up the handler from Caddyfile tokens.
func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	if err := m.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return m, nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	shardcache [<matcher>] [<root>] {
//	    root          <path>
//	    memory        <size>
//	    index         <filenames...>
//	    precompressed <br|zstd|gzip...>
//	    pass_thru
//	}
//
// Sizes take units: 512MiB, 8GiB, 100MB.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		h.Root = d.Val()
	}
	if d.NextArg() {
		return d.Errf("unexpected argument '%s': the only argument is the root", d.Val())
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("%s already specified", opt)
		}
		seen[opt] = true
		switch opt {
		case "root":
			if h.Root != "" {
				return d.Err("root already specified")
			}
			if !d.NextArg() {
				return d.Errf("root: missing directory")
			}
			h.Root = d.Val()
			if d.NextArg() {
				return d.Errf("root: unexpected argument '%s'", d.Val())
			}
		case "memory":
			if !d.NextArg() {
				return d.Errf("memory: missing size")
			}
			n, err := humanize.ParseBytes(d.Val())
			if err != nil || n == 0 || n > 1<<62 {
				return d.Errf("memory: bad size '%s' (want e.g. 512MiB or 8GiB)", d.Val())
			}
			h.Memory = int64(n)
			if d.NextArg() {
				return d.Errf("memory: unexpected argument '%s'", d.Val())
			}
		case "index":
			h.IndexNames = d.RemainingArgs()
			if len(h.IndexNames) == 0 {
				return d.Errf("index: missing file names")
			}
		case "precompressed":
			h.Precompressed = d.RemainingArgs()
			if len(h.Precompressed) == 0 {
				return d.Errf("precompressed: missing encodings (br, zstd, gzip)")
			}
			for _, enc := range h.Precompressed {
				if _, ok := encodingSuffix[enc]; !ok {
					return d.Errf("precompressed: unsupported encoding '%s' (supported: br, zstd, gzip)", enc)
				}
			}
		case "pass_thru":
			if d.NextArg() {
				return d.Errf("pass_thru: unexpected argument '%s'", d.Val())
			}
			h.PassThru = true
		default:
			return d.Errf("unrecognized subdirective '%s'", opt)
		}
	}
	return nil
}
