package shardcache

import (
	"strconv"

	"github.com/dustin/go-humanize"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("shardcache", parseCaddyfile)
	// It answers requests from files, like file_server, and with pass_thru
	// it hands misses on to whatever comes next, file_server included.
	httpcaddyfile.RegisterDirectiveOrder("shardcache", httpcaddyfile.Before, "file_server")
	httpcaddyfile.RegisterGlobalOption("shardcache", parseGlobalOption)
}

// parseGlobalOption sets up the shardcache app (the node) from the global
// option. Syntax:
//
//	shardcache {
//	    node          <name> <san_host:port>
//	    peer          <name> <san_host:port>
//	    peers         srv <_service._proto.name> {   # or: peers dns <name> <port>
//	        refresh   <duration>
//	        resolvers <host[:port]...>
//	        grace     <duration>
//	    }
//	    secret        <value>
//	    tls           <cert_file> <key_file> <ca_file>
//	    fetch_timeout <duration>
//	    lan           <host:port>
//	    replicas      <n>
//	    observer
//	}
//
// `peer` is repeated once per other member; `peers` finds members in DNS
// (SRV: a node per target, named by its first label; dns: A/AAAA records,
// nodes named by their certificates), and may be repeated and mixed with
// `peer` lines. Use `secret` or `tls`. `lan`
// is where this node's site is reached (for the content director);
// `observer` makes this Caddy a content director that holds no content.
func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		return nil, d.Err("shardcache global option already specified")
	}
	app := new(App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "shardcache", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile sets up the app from the global option's tokens; see
// parseGlobalOption for the syntax.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume option name
	if d.NextArg() {
		return d.Errf("unexpected argument '%s': shardcache takes a block", d.Val())
	}
	member := func(what string) (Member, error) {
		args := d.RemainingArgs()
		if len(args) != 2 {
			return Member{}, d.Errf("%s: want <name> <san_host:port>, got %d arguments", what, len(args))
		}
		return Member{Name: args[0], Address: args[1]}, nil
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		switch opt {
		case "node":
			if a.Node != nil {
				return d.Err("node already specified")
			}
			m, err := member("node")
			if err != nil {
				return err
			}
			a.Node = &m
		case "peer":
			m, err := member("peer")
			if err != nil {
				return err
			}
			a.Peers = append(a.Peers, m)
		case "peers":
			src, err := parsePeerSource(d)
			if err != nil {
				return err
			}
			a.PeerSources = append(a.PeerSources, src)
		case "secret":
			if a.Secret != "" {
				return d.Err("secret already specified")
			}
			if !d.NextArg() || d.Val() == "" {
				return d.Err("secret: missing value")
			}
			a.Secret = d.Val()
			if d.NextArg() {
				return d.Err("secret: unexpected second argument")
			}
		case "tls":
			if a.TLS != nil {
				return d.Err("tls already specified")
			}
			args := d.RemainingArgs()
			if len(args) != 3 {
				return d.Errf("tls: want <cert_file> <key_file> <ca_file>, got %d arguments", len(args))
			}
			a.TLS = &TLSFiles{Cert: args[0], Key: args[1], CA: args[2]}
		case "lan":
			if a.Lan != "" {
				return d.Err("lan already specified")
			}
			if !d.NextArg() {
				return d.Err("lan: missing host:port")
			}
			a.Lan = d.Val()
			if d.NextArg() {
				return d.Errf("lan: unexpected argument '%s'", d.Val())
			}
		case "replicas":
			if !d.NextArg() {
				return d.Err("replicas: missing count")
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil || n < 1 {
				return d.Errf("replicas: bad count '%s' (want 1 or more)", d.Val())
			}
			a.Replicas = n
			if d.NextArg() {
				return d.Errf("replicas: unexpected argument '%s'", d.Val())
			}
		case "observer":
			if d.NextArg() {
				return d.Errf("observer: unexpected argument '%s'", d.Val())
			}
			a.Observer = true
		case "fetch_timeout":
			if !d.NextArg() {
				return d.Err("fetch_timeout: missing duration")
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil || dur <= 0 {
				return d.Errf("fetch_timeout: bad duration '%s'", d.Val())
			}
			a.FetchTimeout = caddy.Duration(dur)
			if d.NextArg() {
				return d.Errf("fetch_timeout: unexpected argument '%s'", d.Val())
			}
		default:
			return d.Errf("unrecognized shardcache option '%s'", opt)
		}
	}
	if a.Node == nil {
		return d.Err("shardcache: missing `node <name> <san_host:port>`")
	}
	if a.Secret != "" && a.TLS != nil {
		return d.Err("shardcache: use either secret or tls, not both")
	}
	if a.Secret == "" && a.TLS == nil {
		return d.Err("shardcache: missing `secret <value>` or `tls <cert> <key> <ca>`")
	}
	return nil
}

// parsePeerSource parses `peers srv <name> {...}` or `peers dns <name>
// <port> {...}`.
func parsePeerSource(d *caddyfile.Dispenser) (PeerSource, error) {
	var src PeerSource
	if !d.NextArg() {
		return src, d.Err("peers: missing kind (srv or dns)")
	}
	src.Kind = d.Val()
	switch src.Kind {
	case "srv":
		if !d.NextArg() {
			return src, d.Err("peers srv: missing name (_service._proto.name)")
		}
		src.Name = d.Val()
	case "dns":
		if !d.NextArg() {
			return src, d.Err("peers dns: missing name")
		}
		src.Name = d.Val()
		if !d.NextArg() {
			return src, d.Errf("peers dns %s: missing port", src.Name)
		}
		port, err := strconv.Atoi(d.Val())
		if err != nil || port < 1 || port > 65535 {
			return src, d.Errf("peers dns %s: bad port '%s'", src.Name, d.Val())
		}
		src.Port = port
	default:
		return src, d.Errf("peers: unknown kind '%s' (want srv or dns)", src.Kind)
	}
	if d.NextArg() {
		return src, d.Errf("peers %s: unexpected argument '%s'", src.Kind, d.Val())
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		switch opt {
		case "refresh", "grace", "grace_period":
			if !d.NextArg() {
				return src, d.Errf("peers %s: %s: missing duration", src.Kind, opt)
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil || dur <= 0 {
				return src, d.Errf("peers %s: %s: bad duration '%s'", src.Kind, opt, d.Val())
			}
			if opt == "refresh" {
				src.Refresh = caddy.Duration(dur)
			} else {
				src.Grace = caddy.Duration(dur)
			}
			if d.NextArg() {
				return src, d.Errf("peers %s: %s: unexpected argument '%s'", src.Kind, opt, d.Val())
			}
		case "resolvers":
			src.Resolvers = append(src.Resolvers, d.RemainingArgs()...)
			if len(src.Resolvers) == 0 {
				return src, d.Errf("peers %s: resolvers: missing address", src.Kind)
			}
		default:
			return src, d.Errf("peers %s: unrecognized option '%s'", src.Kind, opt)
		}
	}
	return src, nil
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
//	    hot           <size>
//	    group         <name>
//	}
//
// hot and group matter only in a cluster (the shardcache global option).
// As for every handler directive, a first argument that starts with / is a
// path matcher: write `shardcache * /srv/www` to give the root as an
// argument. Sizes take units: 512MiB, 8GiB, 100MB.
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
		case "hot":
			if !d.NextArg() {
				return d.Errf("hot: missing size")
			}
			n, err := humanize.ParseBytes(d.Val())
			if err != nil || n == 0 || n > 1<<62 {
				return d.Errf("hot: bad size '%s' (want e.g. 256MiB)", d.Val())
			}
			h.Hot = int64(n)
			if d.NextArg() {
				return d.Errf("hot: unexpected argument '%s'", d.Val())
			}
		case "group":
			if !d.NextArg() {
				return d.Errf("group: missing name")
			}
			h.Group = d.Val()
			if d.NextArg() {
				return d.Errf("group: unexpected argument '%s'", d.Val())
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
	if h.Root == "" {
		// A lone argument starting with / was taken as a path matcher.
		return d.Err("shardcache: missing root (`shardcache * /srv/www`, or `root /srv/www` in its block; a lone `/path` argument is a matcher)")
	}
	return nil
}
