package shardcache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"

	"github.com/shardcache/caddy-shardcache/cluster"
	"github.com/shardcache/caddy-shardcache/peering"
	"github.com/shardcache/caddy-shardcache/shard"
)

func init() {
	caddy.RegisterModule(App{})
}

// App is the shardcache node, one per process: its identity in the cluster,
// its SAN (QUIC) listener, its peers and the consistent-hash ring that says
// which node owns which file. Configure it with the `shardcache` global
// option. Without a node, every `shardcache` handler is a single node that
// holds its whole root.
//
// The UDP socket is bound when the server starts (never by `caddy
// validate`) and survives config reloads that keep the node's name,
// address, peers and credentials.
type App struct {
	// This node's name and SAN address. Without it the app only starts
	// the handlers' priming (single-node mode).
	Node *Member `json:"node,omitempty"`

	// The other members of the cluster. Every node must list the same
	// members (itself as `node`, the others as peers) to get the same
	// ring.
	Peers []Member `json:"peers,omitempty"`

	// Sources of more members, looked up in DNS in the background and
	// followed as they change: the ring changes when the member set does.
	PeerSources []PeerSource `json:"peer_sources,omitempty"`

	// The cluster secret. Every node derives the same certificate
	// authority from it and issues itself a certificate, so peers
	// authenticate each other with mutual TLS. Placeholders such as
	// `{env.SHARDCACHE_SECRET}` are replaced when the config loads, so the
	// secret need not appear in the config. Use either this or TLS.
	Secret string `json:"secret,omitempty"`

	// Certificate files to use instead of a secret: this node's
	// certificate (with a DNS name equal to the node's name) and key, and
	// the CA that signs every member's certificate.
	TLS *TLSFiles `json:"tls,omitempty"`

	// How long a request waits for a peer before the file is read from
	// this node's own storage instead. Default: 2s.
	FetchTimeout caddy.Duration `json:"fetch_timeout,omitempty"`

	// The address (host:port) where this node's HTTP site is reached, as
	// the content director's reverse_proxy upstreams name it. Advertised
	// to every peer and observer.
	Lan string `json:"lan,omitempty"`

	// Join as an observer: a content director (`lb_policy shardcache`)
	// that holds no content and is in no ring. It learns the ring, the
	// members' readiness and their LAN addresses from the peers it lists.
	// Content nodes accept any holder of a cluster certificate as an
	// observer without listing it.
	Observer bool `json:"observer,omitempty"`

	// How many nodes hold each file: its owner and the next replicas-1
	// distinct nodes on the ring. A node asks the owner, then the
	// replicas, then reads its own storage; the director sends a request
	// to a live replica when the owner is down. Every node must use the
	// same value. Default: 1.
	Replicas int `json:"replicas,omitempty"`

	mu      *sync.Mutex
	sources []source
	cluster *clusterRef         // nil in single-node mode
	members *cluster.Membership // this config's ring
	key     string              // the usage pool key of cluster
	merger  *cluster.Merger
	creds   *peering.Credentials // from TLS files, read by Provision
	static  []peering.Peer       // the peer lines
	dns     []*cluster.DNSSource // the peers sources
	found   [][]cluster.Member   // their last answers, under mu
	stopDNS context.CancelFunc
	logger  *zap.Logger
}

// Member names one node of the cluster.
type Member struct {
	// The node's name: unique in the cluster, a valid DNS label such as
	// `n1` or `cache-2` (it is the name in the node's certificate).
	Name string `json:"name"`

	// The node's SAN address, host:port (UDP).
	Address string `json:"address"`
}

// PeerSource finds members in DNS.
type PeerSource struct {
	// `srv`: SRV records of Name (`_service._proto.name`); each target is a
	// node, named by its first label (a StatefulSet pod's hostname), at the
	// target's address and the record's port. `dns`: A/AAAA records of
	// Name, each a node at Port, named by its certificate when it connects.
	Kind string `json:"kind"`
	Name string `json:"name"`
	Port int    `json:"port,omitempty"`
	// How often to look again. Default: 1m.
	Refresh caddy.Duration `json:"refresh,omitempty"`
	// DNS servers to ask (host or host:port), in turn. Default: the
	// system's.
	Resolvers []string `json:"resolvers,omitempty"`
	// How long lookups may fail, or answer nothing, before it is logged
	// as an error (failures) or taken as the answer (an empty set). The
	// last good set is kept through failures whatever their length.
	// Default: 30s.
	Grace caddy.Duration `json:"grace,omitempty"`
}

// TLSFiles are PEM files for the cluster's mutual TLS.
type TLSFiles struct {
	// This node's certificate (chain).
	Cert string `json:"cert"`
	// Its private key.
	Key string `json:"key"`
	// The certificate authority every member's certificate chains to.
	CA string `json:"ca"`
}

// DefaultFetchTimeout is how long a request waits for a peer by default.
const DefaultFetchTimeout = 2 * time.Second

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "shardcache",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision checks the node's configuration and gets the shared cluster
// state from the usage pool. It binds nothing: Start does.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	a.mu = new(sync.Mutex)
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	if a.Node == nil {
		if len(a.Peers) > 0 || a.Secret != "" || a.TLS != nil {
			return errors.New("peers, secret and tls need a node: add `node <name> <address>`")
		}
		return nil
	}
	if a.FetchTimeout == 0 {
		a.FetchTimeout = caddy.Duration(DefaultFetchTimeout)
	}
	if a.Replicas == 0 {
		a.Replicas = 1
	}
	// Runtime placeholders ({env.POD_IP}) in the node, the peers and lan:
	// a pod's name and address are known only where it runs.
	repl := caddy.NewReplacer()
	expand := func(s string) string { return repl.ReplaceKnown(s, "") }
	if n := expand(a.Node.Name); n == "" && strings.Contains(a.Node.Name, "{") {
		return fmt.Errorf("node name %s: empty once placeholders are replaced (is the variable set?)", a.Node.Name)
	}
	node := Member{Name: expand(a.Node.Name), Address: expand(a.Node.Address)}
	a.Node = &node
	peersCopy := make([]Member, len(a.Peers))
	for i, p := range a.Peers {
		peersCopy[i] = Member{Name: expand(p.Name), Address: expand(p.Address)}
	}
	a.Peers = peersCopy
	a.Lan = expand(a.Lan)
	if err := a.validate(); err != nil {
		return err
	}
	secret := a.Secret
	if secret != "" {
		repl := caddy.NewReplacer()
		secret = repl.ReplaceKnown(secret, "")
		if len(secret) < minSecretLen {
			// Name the placeholder, never the value.
			return fmt.Errorf("secret %s: %d bytes once placeholders are replaced; need at least %d (`caddy shardcache secret` makes one)",
				redactSecret(a.Secret), len(secret), minSecretLen)
		}
	}
	peers := make([]peering.Peer, len(a.Peers))
	for i, p := range a.Peers {
		peers[i] = peering.Peer{Name: p.Name, Addr: p.Address}
	}
	a.members = cluster.NewMembership(a.Node.Name, a.Observer, peers, a.Replicas)
	a.static = peers
	for _, ps := range a.PeerSources {
		var resolvers []string
		for _, r := range ps.Resolvers {
			resolvers = append(resolvers, repl.ReplaceKnown(r, ""))
		}
		name := repl.ReplaceKnown(ps.Name, "")
		var src *cluster.DNSSource
		var err error
		switch ps.Kind {
		case "srv":
			src, err = cluster.NewSRVSource(name, time.Duration(ps.Refresh), time.Duration(ps.Grace), resolvers)
		case "dns":
			src, err = cluster.NewDNSSource(name, ps.Port, time.Duration(ps.Refresh), time.Duration(ps.Grace), resolvers)
		default:
			err = fmt.Errorf("unknown kind %q (want srv or dns)", ps.Kind)
		}
		if err != nil {
			return fmt.Errorf("peers %s %s: %v", ps.Kind, ps.Name, err)
		}
		a.dns = append(a.dns, src)
	}
	// The node's identity: a config that changes it needs a new node (and
	// a restart, as the SAN socket stays bound). Peers, replicas, lan,
	// fetch_timeout and the contents of tls files change in place on
	// reload. The secret itself is not kept in the key.
	a.key = fmt.Sprintf("cluster|%s|%s|%s|%v|%v", a.Node.Name, a.Node.Address,
		fingerprint(secret), a.TLS != nil, a.Observer)
	if other, ok := liveKeys.Load(a.Node.Address); ok && other.(string) != a.key {
		// A reload would need a second socket on the same address, and the
		// running node's connections and tables belong to its identity.
		return fmt.Errorf("node %s at %s: its name, observer role or credentials changed; "+
			"that takes a restart (a reload keeps the running node's SAN socket and connections)", a.Node.Name, a.Node.Address)
	}
	val, _, err := clusters.LoadOrNew(a.key, func() (caddy.Destructor, error) {
		c := cluster.New(cluster.Config{
			Name:        a.Node.Name,
			Addr:        a.Node.Address,
			Observer:    a.Observer,
			Logger:      caddy.Log().Named("shardcache.cluster"),
			OnPeerFetch: observePeerFetch,
		}, a.members)
		return &clusterRef{Cluster: c, key: a.key, addr: a.Node.Address, secret: secret}, nil
	})
	if err != nil {
		return err
	}
	a.cluster = val.(*clusterRef)
	if a.TLS != nil {
		// Read now, so that a bad file fails the config (and `caddy
		// validate`); Start hands changed contents to the running node.
		if a.creds, err = peering.CredentialsFromFiles(a.TLS.Cert, a.TLS.Key, a.TLS.CA); err != nil {
			return fmt.Errorf("node %s: tls: %v", a.Node.Name, err)
		}
	}
	return nil
}

func (a *App) validate() error {
	seen := map[string]string{}
	check := func(what string, m Member) error {
		if m.Name == "" {
			return fmt.Errorf("%s: missing name", what)
		}
		if !validNodeName(m.Name) {
			return fmt.Errorf("%s %q: a node name is a DNS label: letters, digits and '-'", what, m.Name)
		}
		if _, _, err := net.SplitHostPort(m.Address); err != nil {
			return fmt.Errorf("%s %s: bad address %q: %v", what, m.Name, m.Address, err)
		}
		if other, dup := seen[m.Name]; dup {
			return fmt.Errorf("%s %s: name already used by %s", what, m.Name, other)
		}
		seen[m.Name] = what
		return nil
	}
	if err := check("node", *a.Node); err != nil {
		return err
	}
	for _, p := range a.Peers {
		if err := check("peer", p); err != nil {
			return err
		}
	}
	switch {
	case a.Secret == "" && a.TLS == nil:
		return errors.New("a cluster needs `secret <value>` or `tls <cert> <key> <ca>`")
	case a.Secret != "" && a.TLS != nil:
		return errors.New("use either secret or tls, not both")
	case a.TLS != nil && (a.TLS.Cert == "" || a.TLS.Key == "" || a.TLS.CA == ""):
		return errors.New("tls needs a certificate, a key and a CA file")
	case a.Replicas < 0 || len(a.PeerSources) == 0 && a.Replicas > len(a.Peers)+1:
		return fmt.Errorf("replicas %d: want 1 to %d (the number of members)", a.Replicas, len(a.Peers)+1)
	case a.Observer && len(a.Peers) == 0 && len(a.PeerSources) == 0:
		return errors.New("an observer needs the content nodes as `peer`s or `peers` from DNS")
	case a.Observer && a.Lan != "":
		return errors.New("an observer serves no content: it has no `lan` address")
	}
	if a.Lan != "" {
		if _, _, err := net.SplitHostPort(a.Lan); err != nil {
			return fmt.Errorf("lan %q: want host:port: %v", a.Lan, err)
		}
	}
	return nil
}

// minSecretLen is the shortest cluster secret accepted.
const minSecretLen = 16

// redactSecret shows a configured secret in an error: a placeholder as it
// is, a literal value not at all.
func redactSecret(s string) string {
	if strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") {
		return s
	}
	return "(literal)"
}

func validNodeName(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// source is what one handler serves from: its store (started with the
// app), its counters, and in a cluster its group.
type source struct {
	name   string // the group, or on a single node the root
	budget int64  // memory + hot: the most its bodies may take
	hot    int64  // the hot cache's budget, in a cluster
	store  *shard.Store
	stats  *cluster.Stats
	grp    *cluster.Group // nil on a single node
	epoch  uint64         // the ring epoch a new store starts with
}

// addSource registers a handler's store to start with the app. Called from
// handlers' Provision: nothing runs or is shared before Start.
func (a *App) addSource(s source) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, o := range a.sources {
		if o.store == s.store {
			return // two handlers (sites) sharing one store
		}
		if s.grp != nil && o.grp == s.grp {
			// Both stores prime and serve their own sites; the group (what
			// peers fetch and see) is the first one's.
			a.logger.Warn("two handlers of one group with different settings (memory or precompressed): "+
				"each holds its own copy; peers are served from the first",
				zap.String("group", s.name), zap.String("root", s.store.Root()))
		}
	}
	a.sources = append(a.sources, s)
}

// Start commits this config: it binds the SAN socket (once per node: a
// reload reuses it), hands the cluster this config's membership and
// groups, and starts priming every store of this config. A store kept
// from the previous config is already primed or priming; starting it
// again does nothing. Provision changed nothing a running node shares, so
// a config that fails before this point leaves the running one as it was.
func (a *App) Start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c := a.cluster; c != nil {
		if err := c.start(a); err != nil {
			return err
		}
		if n := c.Node(); n != nil && a.creds != nil && !a.creds.Equal(n.Credentials()) {
			// The files changed on disk since the node started: new
			// handshakes use the new ones, connections stay up.
			if err := n.SetCredentials(a.creds); err != nil {
				return fmt.Errorf("node %s: tls: %v", a.Node.Name, err)
			}
			a.logger.Info("cluster credentials changed on disk: new connections use them",
				zap.String("cert", a.TLS.Cert), zap.String("fingerprint", a.creds.Fingerprint()[:16]))
		}
		cm := cluster.Commit{Members: a.initialMembers(), Lan: a.Lan, FetchTimeout: time.Duration(a.FetchTimeout)}
		seen := map[string]bool{}
		for _, s := range a.sources {
			if !seen[s.name] {
				seen[s.name] = true
				cm.Groups = append(cm.Groups, cluster.GroupConfig{Name: s.name, Store: s.store, Hot: s.hot, Epoch: s.epoch})
			}
		}
		c.Commit(cm)
	}
	var budget int64
	for _, s := range a.sources {
		s.store.Start()
		budget += s.budget
	}
	reg.set(a, a.sources, a.cluster)
	if a.cluster != nil {
		a.watchPeers()
	}
	if len(a.sources) > 0 {
		setMemoryLimit(budget, a.logger)
		startMemoryGovernor(a.logger)
	}
	return nil
}

// reg is what the running config serves, for the admin API and metrics.
var reg registry

type registry struct {
	mu      sync.Mutex
	owner   *App
	sources []source
	cluster *clusterRef
}

func (r *registry) set(owner *App, sources []source, c *clusterRef) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.owner, r.sources, r.cluster = owner, sources, c
}

// clear forgets owner's config, unless a newer one replaced it.
func (r *registry) clear(owner *App) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.owner == owner {
		r.owner, r.sources, r.cluster = nil, nil, nil
	}
}

// current is the App of the running config.
func (r *registry) current() *App {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.owner
}

func (r *registry) get() ([]source, *clusterRef) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sources, r.cluster
}

// Stop does nothing: the stores and the SAN socket live in usage pools and
// are released by Cleanup.
func (a *App) Stop() error {
	if a.stopDNS != nil {
		a.stopDNS()
	}
	return nil
}

// dnsStartTimeout bounds the first lookups of the peer sources when the
// node starts: the first ring should have the members DNS knows, but a
// DNS outage must not keep the node from starting (it starts with the
// static members and follows DNS once it answers).
const dnsStartTimeout = 5 * time.Second

// initialMembers is this config's membership when it is committed: the
// static peers and, with peer sources, what DNS answers now. Called with
// a.mu held.
func (a *App) initialMembers() *cluster.Membership {
	if len(a.dns) == 0 {
		return a.cluster.MembershipFor(a.static, a.Replicas)
	}
	a.found = make([][]cluster.Member, len(a.dns))
	ctx, cancel := context.WithTimeout(context.Background(), dnsStartTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for i, src := range a.dns {
		wg.Go(func() {
			ms, err := src.Lookup(ctx)
			if err != nil {
				a.logger.Warn("peer source: first lookup failed; starting without its members", zap.Stringer("source", src), zap.Error(err))
				return
			}
			a.found[i] = ms
		})
	}
	wg.Wait()
	a.merger = cluster.NewMerger(a.logger)
	return a.cluster.MembershipFor(a.merger.Merge(a.static, a.found...), a.Replicas)
}

// watchPeers follows the peer sources in the background until the config
// stops: a changed member set changes the ring. Called with a.mu held.
func (a *App) watchPeers() {
	if len(a.dns) == 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.stopDNS = cancel
	log := caddy.Log().Named("shardcache.peers")
	for i, src := range a.dns {
		go src.Watch(ctx, log, func(ms []cluster.Member) {
			a.mu.Lock()
			a.found[i] = ms
			merged := a.merger.Merge(a.static, a.found...)
			a.mu.Unlock()
			if ctx.Err() == nil && reg.current() == a {
				a.cluster.SetMemberSet(merged, a.Replicas)
			}
		})
	}
}

// Cleanup releases this config's reference to the cluster node; the last
// one closes it.
func (a *App) Cleanup() error {
	// A config without shardcache that replaced this one exports no
	// stores and shows none in the admin API.
	reg.clear(a)
	if a.cluster == nil {
		return nil
	}
	_, err := clusters.Delete(a.key)
	a.cluster = nil
	return err
}

// clusters keeps SAN sockets, peer connections and tables of content alive
// across config reloads. liveKeys maps a SAN address to the key of the
// cluster that holds it.
var (
	clusters = caddy.NewUsagePool()
	liveKeys sync.Map
)

// clusterRef lets a *cluster.Cluster live in a caddy.UsagePool.
type clusterRef struct {
	*cluster.Cluster
	key, addr string
	secret    string // with placeholders replaced

	startOnce sync.Once
	startErr  error
}

// start binds the cluster's SAN socket, once, with a's credentials.
func (c *clusterRef) start(a *App) error {
	c.startOnce.Do(func() {
		var creds *peering.Credentials
		var err error
		if a.creds != nil {
			creds = a.creds
		} else {
			creds, err = peering.CredentialsFromSecret(c.secret, a.Node.Name)
		}
		if err != nil {
			c.startErr = fmt.Errorf("node %s: credentials: %v", a.Node.Name, err)
			return
		}
		if err := c.Start(creds, a.Lan); err != nil {
			c.startErr = err
			return
		}
		liveKeys.Store(c.addr, c.key)
	})
	return c.startErr
}

// Destruct closes the node when the last config using it is gone.
func (c *clusterRef) Destruct() error {
	liveKeys.CompareAndDelete(c.addr, c.key)
	return c.Close()
}

// fingerprint names a secret without revealing it.
func fingerprint(secret string) string {
	if secret == "" {
		return ""
	}
	sum := sha256.Sum256([]byte("shardcache fingerprint\x00" + secret))
	return hex.EncodeToString(sum[:8])
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
