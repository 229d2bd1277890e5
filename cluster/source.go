package cluster

// Membership sources: the members a node finds in DNS, in the background.
//
// A DNSSource resolves one name every refresh interval, either SRV records
// (`peers srv _service._proto.name`) or A/AAAA records (`peers dns name
// port`), the way Caddy's reverse_proxy dynamic upstreams (SRVUpstreams,
// AUpstreams) do: the same defaults (refresh 1m) and the same resolver
// construction (a Go resolver whose Dial goes to the configured resolvers
// instead of the system's). Watch turns the answers into changes of the
// member set, and MergeMembers / Merger combine the sets of the static
// `peer` lines and of every source into the one list the ring is built
// from.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/shardcache/caddy-shardcache/peering"
)

// Member is one node a source found: its name and SAN address. A member
// found by an A/AAAA source has no name (Name ""): see NewDNSSource.
type Member = peering.Peer

const (
	// DefaultSourceRefresh is how often a source re-resolves when no
	// refresh is configured: Caddy's default for its dynamic upstreams.
	DefaultSourceRefresh = time.Minute
	// DefaultSourceGrace is how long a source keeps its last set when no
	// grace is configured (see Watch). Caddy's grace_period defaults to 0,
	// meaning no stale answers at all; a membership must not lose its
	// members to one bad answer, so the default here is not 0.
	DefaultSourceGrace = 30 * time.Second
	// lookupTimeout bounds one resolution (all its queries) in Watch.
	lookupTimeout = 10 * time.Second
	// srvTargetLookups is how many SRV targets are resolved at once.
	srvTargetLookups = 8
)

// DNSSource finds members in DNS: by SRV records (NewSRVSource) or by
// A/AAAA records (NewDNSSource). Safe for concurrent use; Watch it once.
type DNSSource struct {
	name    string // the name looked up, as configured
	srv     bool
	port    int // A/AAAA only: the port every address gets
	refresh time.Duration
	grace   time.Duration
	// timeout bounds one resolution in Watch: lookupTimeout (tests make
	// it shorter).
	timeout time.Duration

	resolvers []resolverAddr // empty: the system's resolver
	next      atomic.Uint32  // the resolver the next dial goes to
	resolver  *net.Resolver
}

// resolverAddr is one configured DNS resolver: the network forced by the
// configuration ("" means whichever the Go resolver asks for: udp, or tcp
// for a truncated answer) and its host:port.
type resolverAddr struct {
	network string
	addr    string
}

// NewSRVSource makes a source of members from the SRV records of name, the
// full "_service._proto.name" (for example
// "_shardcache._udp.www.default.svc.cluster.local"). Each target host is a
// node: its name is the target's first DNS label, lower-cased (a
// StatefulSet's pod "web-0.www.default.svc.cluster.local." is "web-0",
// across restarts); its address is the target's first A/AAAA address (the
// addresses sorted, IPv4 first) with the record's port. Targets whose
// first label is not a valid node name are skipped (Watch logs them once).
//
// refresh is how often Watch re-resolves (0: DefaultSourceRefresh), grace
// how long it rides out failures and empty answers before it says so or
// believes them (0: DefaultSourceGrace; see Watch). resolvers are the DNS
// servers to ask, as reverse_proxy's `resolvers`: "host", "host:port",
// optionally prefixed with "udp/" or "tcp/" to force a network; the port
// defaults to 53 and the host must be an IP address. Each query goes to
// the next of them in turn. None: the system's resolver. Either way the
// name is resolved as Go resolves names: /etc/hosts first for addresses,
// then DNS, a name with fewer dots than resolv.conf's ndots through its
// search list first (Kubernetes: ndots:5); a trailing dot makes the name
// absolute and saves those queries.
func NewSRVSource(name string, refresh, grace time.Duration, resolvers []string) (*DNSSource, error) {
	if name == "" {
		return nil, errors.New("srv source: no name to look up")
	}
	return newDNSSource(name, true, 0, refresh, grace, resolvers)
}

// NewDNSSource makes a source of members from the A and AAAA records of
// name, each address with port. An address record carries no name, and a
// node's name must never be derived from an address that can change (the
// ring is over names), so the members it finds have Name "" and Addr
// ip:port: the caller (the peering layer) learns each one's node name from
// its certificate when it connects. See NewSRVSource for refresh, grace
// and resolvers.
func NewDNSSource(name string, port int, refresh, grace time.Duration, resolvers []string) (*DNSSource, error) {
	if name == "" {
		return nil, errors.New("dns source: no name to look up")
	}
	if port <= 0 || port > 65535 {
		return nil, fmt.Errorf("dns source %s: port %d out of range", name, port)
	}
	return newDNSSource(name, false, port, refresh, grace, resolvers)
}

func newDNSSource(name string, srv bool, port int, refresh, grace time.Duration, resolvers []string) (*DNSSource, error) {
	if refresh < 0 || grace < 0 {
		return nil, fmt.Errorf("source %s: negative refresh (%v) or grace (%v)", name, refresh, grace)
	}
	if refresh == 0 {
		refresh = DefaultSourceRefresh
	}
	if grace == 0 {
		grace = DefaultSourceGrace
	}
	s := &DNSSource{
		name:    name,
		srv:     srv,
		port:    port,
		refresh: refresh,
		grace:   grace,
		timeout: lookupTimeout,
	}
	for _, r := range resolvers {
		ra, err := parseResolver(r)
		if err != nil {
			return nil, fmt.Errorf("source %s: %w", name, err)
		}
		s.resolvers = append(s.resolvers, ra)
	}
	// StrictErrors, unlike Caddy's: without it a temporary failure of one
	// question can come back as another's "no such host" (the A question
	// failing while the AAAA one finds nothing; the full name failing
	// while a search-list name does not exist), a failure read as an
	// empty answer, and a dual-stack name can lose one family's addresses.
	// For a membership a partial answer is a failure.
	if len(s.resolvers) == 0 {
		s.resolver = &net.Resolver{StrictErrors: true} // the system's, as net.DefaultResolver
		return s, nil
	}
	// As Caddy's dynamic upstreams: a Go resolver whose every connection
	// goes to a configured resolver, whatever /etc/resolv.conf names.
	// Two differences, both for a membership: the resolvers are taken in
	// turn rather than at random, so that a dead one costs one attempt
	// and the next attempt reaches another; and a resolver with no network
	// forced gets the network Go asks for, so that a truncated UDP answer
	// (a large SRV set) is asked again over TCP rather than over UDP,
	// which would hand back the truncated, partial set.
	var d net.Dialer
	s.resolver = &net.Resolver{
		PreferGo:     true,
		StrictErrors: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			r := s.resolvers[(s.next.Add(1)-1)%uint32(len(s.resolvers))]
			if r.network != "" {
				network = r.network
			}
			return d.DialContext(ctx, network, r.addr)
		},
	}
	return s, nil
}

// parseResolver parses one configured resolver: [network/]host[:port].
func parseResolver(s string) (resolverAddr, error) {
	var ra resolverAddr
	rest := s
	if network, addr, ok := strings.Cut(s, "/"); ok {
		switch network {
		case "udp", "udp4", "udp6", "tcp", "tcp4", "tcp6":
		default:
			return ra, fmt.Errorf("resolver %q: network %q is not udp or tcp", s, network)
		}
		ra.network, rest = network, addr
	}
	host, port, err := net.SplitHostPort(rest)
	if err != nil {
		host, port = strings.Trim(rest, "[]"), "53"
	}
	if _, err := netip.ParseAddr(host); err != nil {
		// Dialing a name would need the resolver being configured.
		return ra, fmt.Errorf("resolver %q: host is not an IP address", s)
	}
	if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
		return ra, fmt.Errorf("resolver %q: bad port %q", s, port)
	}
	ra.addr = net.JoinHostPort(host, port)
	return ra, nil
}

// String names the source for logs: "srv NAME" or "dns NAME:PORT".
func (s *DNSSource) String() string {
	if s.srv {
		return "srv " + s.name
	}
	return "dns " + net.JoinHostPort(s.name, strconv.Itoa(s.port))
}

// Refresh is how often Watch resolves.
func (s *DNSSource) Refresh() time.Duration { return s.refresh }

// Grace is how long Watch rides out failures and empty answers.
func (s *DNSSource) Grace() time.Duration { return s.grace }

// Lookup resolves the source once: its members sorted by name then
// address, de-duplicated (an SRV target listed twice with different ports
// is kept once, with the lowest address). A name that does not exist
// (NXDOMAIN) or has no records is a successful, empty answer: no members
// and a nil error. An error means the answer is unknown (a timeout, a
// SERVFAIL, an SRV target's address that could not be resolved for a
// reason other than its not existing): keep what was known before.
func (s *DNSSource) Lookup(ctx context.Context) ([]Member, error) {
	members, _, err := s.lookup(ctx)
	return members, err
}

// lookup is Lookup, with notes for Watch to log once each: what was left
// out of the answer and why.
//
// The Go resolver makes a few attempts per question (two by default, from
// /etc/resolv.conf), each dialing the next configured resolver, and the
// A and AAAA questions run at once; so with more resolvers than that, or
// one dead, a question can fail where another resolver would answer. A
// failed resolution is therefore tried again, once per configured
// resolver, each try with an equal share of what is left of ctx's time.
func (s *DNSSource) lookup(ctx context.Context) ([]Member, []string, error) {
	tries := max(len(s.resolvers), 1)
	for i := 0; ; i++ {
		tctx, cancel := ctx, context.CancelFunc(func() {})
		if dl, ok := ctx.Deadline(); ok && i < tries-1 {
			tctx, cancel = context.WithTimeout(ctx, time.Until(dl)/time.Duration(tries-i))
		}
		var members []Member
		var notes []string
		var err error
		if s.srv {
			members, notes, err = s.lookupSRV(tctx)
		} else {
			members, notes, err = s.lookupA(tctx)
		}
		cancel()
		if err == nil || ctx.Err() != nil || i+1 >= tries {
			return members, notes, err
		}
	}
}

func (s *DNSSource) lookupA(ctx context.Context) ([]Member, []string, error) {
	ips, err := s.resolver.LookupNetIP(ctx, "ip", s.name)
	if err != nil {
		if isNotFound(err) {
			return nil, nil, nil
		}
		return nil, nil, err
	}
	members := make([]Member, 0, len(ips))
	for _, ip := range ips {
		ap := netip.AddrPortFrom(ip.Unmap().WithZone(""), uint16(s.port))
		members = append(members, Member{Addr: ap.String()})
	}
	return canonicalMembers(members), nil, nil
}

func (s *DNSSource) lookupSRV(ctx context.Context) ([]Member, []string, error) {
	_, records, err := s.resolver.LookupSRV(ctx, "", "", s.name)
	var notes []string
	if err != nil {
		switch {
		case isNotFound(err):
			return nil, nil, nil
		case len(records) == 0:
			return nil, nil, err
		}
		// As Caddy: records with invalid names were filtered out and
		// the rest is a usable answer.
		notes = append(notes, "SRV records filtered: "+err.Error())
	}
	type target struct {
		host, name string
		port       uint16
	}
	var targets []*target
	for _, rec := range records {
		host := strings.ToLower(strings.TrimSuffix(rec.Target, "."))
		if host == "" {
			continue // "." : no service here (RFC 2782)
		}
		label, _, _ := strings.Cut(host, ".")
		if !validMemberName(label) {
			notes = append(notes, fmt.Sprintf("SRV target %s skipped: %q is not a valid node name", rec.Target, label))
			continue
		}
		targets = append(targets, &target{host: host + ".", name: label, port: rec.Port})
	}
	// Each distinct host is resolved once.
	addrs := make(map[string]*netip.Addr)
	var hosts []string
	for _, t := range targets {
		if _, ok := addrs[t.host]; !ok {
			addrs[t.host] = nil
			hosts = append(hosts, t.host)
		}
	}
	var mu sync.Mutex
	var missing []string
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(srvTargetLookups)
	for _, host := range hosts {
		g.Go(func() error {
			ips, err := s.resolver.LookupNetIP(gctx, "ip", host)
			if err != nil {
				if isNotFound(err) {
					mu.Lock()
					missing = append(missing, host)
					mu.Unlock()
					return nil
				}
				return fmt.Errorf("SRV target %s: %w", host, err)
			}
			if len(ips) == 0 {
				return nil
			}
			for i := range ips {
				ips[i] = ips[i].Unmap().WithZone("")
			}
			first := slices.MinFunc(ips, netip.Addr.Compare)
			mu.Lock()
			addrs[host] = &first
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, nil, err
	}
	slices.Sort(missing)
	for _, host := range missing {
		notes = append(notes, "SRV target "+host+" skipped: it has no address")
	}
	members := make([]Member, 0, len(targets))
	for _, t := range targets {
		if a := addrs[t.host]; a != nil {
			members = append(members, Member{Name: t.name, Addr: netip.AddrPortFrom(*a, t.port).String()})
		}
	}
	members = canonicalMembers(members)
	// One address per name: a node has one SAN address.
	out := members[:0]
	for _, m := range members {
		if len(out) > 0 && out[len(out)-1].Name == m.Name {
			notes = append(notes, fmt.Sprintf("node %s listed at %s and %s: using %s", m.Name, out[len(out)-1].Addr, m.Addr, out[len(out)-1].Addr))
			continue
		}
		out = append(out, m)
	}
	return out, notes, nil
}

// isNotFound reports whether err says the name has no records: a
// successful answer, not a failure.
func isNotFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

// validMemberName reports whether s can be a node name: a DNS label of
// letters, digits and '-', not starting or ending with '-'.
func validMemberName(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// compareAddr orders addresses: IP:port ones numerically (IPv4 first),
// then the others (host names) as strings.
func compareAddr(a, b string) int {
	pa, ea := netip.ParseAddrPort(a)
	pb, eb := netip.ParseAddrPort(b)
	switch {
	case ea == nil && eb == nil:
		return pa.Compare(pb)
	case ea == nil:
		return -1
	case eb == nil:
		return 1
	}
	return strings.Compare(a, b)
}

// compareMembers orders members: named ones by name then address, then
// nameless ones by address.
func compareMembers(a, b Member) int {
	if (a.Name == "") != (b.Name == "") {
		if a.Name == "" {
			return 1
		}
		return -1
	}
	return cmp.Or(strings.Compare(a.Name, b.Name), compareAddr(a.Addr, b.Addr))
}

// canonicalMembers sorts members and drops exact duplicates, in place.
func canonicalMembers(ms []Member) []Member {
	slices.SortFunc(ms, compareMembers)
	return slices.Compact(ms)
}

// Watch resolves the source until ctx ends: at once, then every refresh
// interval (counted from the end of the previous resolution, which may
// take up to 10s). It calls onChange, on Watch's
// goroutine, with the member set (sorted, de-duplicated, its own copy)
// once with the first answer and then only when the set changes: the same
// records in another order are no change.
//
// A failure (timeout, SERVFAIL, refused...) never changes the set: Watch
// keeps the last good set and logs a WARN with the error and how long
// lookups have been failing; once they have failed for grace it logs one
// ERROR ("keeping the last good set anyway") and still keeps it, however
// long it lasts. Until a first good answer there is no set and no call.
//
// An empty answer that is successful (NXDOMAIN, or no records) is a real
// answer, but a flapping DNS (a service briefly without endpoints, a
// zone being reloaded) must not empty the ring and move every file: it
// replaces a non-empty set only when every answer has been empty for
// grace (the first empty answer is at least grace old at a later
// resolution, with no non-empty answer between them; failures between
// them neither confirm nor cancel it). Until then the last set stays and
// an INFO says so. The exception is the first answer: when nothing was
// reported yet, an empty set is reported at once (it takes nothing away).
func (s *DNSSource) Watch(ctx context.Context, log *zap.Logger, onChange func([]Member)) {
	if log == nil {
		log = zap.NewNop()
	}
	log = log.With(zap.String("source", s.String()))
	w := watchState{s: s, log: log, onChange: onChange}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		lctx, cancel := context.WithTimeout(ctx, s.timeout)
		members, notes, err := s.lookup(lctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		w.answer(time.Now(), members, notes, err)
		t.Reset(s.refresh)
	}
}

// watchState is what Watch remembers between resolutions.
type watchState struct {
	s        *DNSSource
	log      *zap.Logger
	onChange func([]Member)

	have bool     // a set was reported
	last []Member // the set reported last

	failingSince time.Time // the first failure of the current run of them
	errorLogged  bool      // the ERROR for this run of failures
	emptySince   time.Time // the first empty answer of the current run

	notes map[string]bool // the notes of the last answer, logged once
}

func (w *watchState) answer(now time.Time, members []Member, notes []string, err error) {
	if err != nil {
		if w.failingSince.IsZero() {
			w.failingSince = now
		}
		failing := now.Sub(w.failingSince)
		w.log.Warn("peer lookup failed; keeping the last good set",
			zap.Error(err),
			zap.Duration("failing_for", failing),
			zap.Int("members", len(w.last)),
			zap.Bool("have_set", w.have))
		if failing >= w.s.grace && !w.errorLogged {
			w.errorLogged = true
			w.log.Error("peer lookups have failed for longer than the grace period; keeping the last good set anyway",
				zap.Error(err),
				zap.Duration("failing_for", failing),
				zap.Duration("grace", w.s.grace),
				zap.Int("members", len(w.last)),
				zap.Bool("have_set", w.have))
		}
		return
	}
	if !w.failingSince.IsZero() {
		w.log.Info("peer lookups answer again", zap.Duration("failed_for", now.Sub(w.failingSince)))
		w.failingSince, w.errorLogged = time.Time{}, false
	}
	seen := make(map[string]bool, len(notes))
	for _, n := range notes {
		if !w.notes[n] {
			w.log.Warn("peer lookup: "+n, zap.String("note", n))
		}
		seen[n] = true
	}
	w.notes = seen

	if len(members) == 0 && w.have && len(w.last) > 0 {
		if w.emptySince.IsZero() {
			w.emptySince = now
		}
		empty := now.Sub(w.emptySince)
		if empty < w.s.grace {
			w.log.Info("peer lookup found no members; keeping the last set until the answer has been empty for the grace period",
				zap.Duration("empty_for", empty),
				zap.Duration("grace", w.s.grace),
				zap.Int("members", len(w.last)))
			return
		}
		w.log.Warn("peer lookup has found no members for the grace period; the source now has none",
			zap.Duration("empty_for", empty),
			zap.Int("members_before", len(w.last)))
	}
	w.emptySince = time.Time{}
	if w.have && slices.Equal(members, w.last) {
		return
	}
	w.have, w.last = true, slices.Clone(members)
	w.log.Info("peer set changed", zap.Int("members", len(members)))
	w.onChange(slices.Clone(members))
}

// MergeMembers combines the static members (the `peer` lines) and the
// sets the sources found into one list: named members sorted by name then
// address, then nameless ones (from A/AAAA sources) by address. A name
// appears once: when it comes with different addresses, the static one
// wins, then the first source's (in the order given), then the lowest
// address; such conflicts are not reported here (see Merger). A nameless
// member appears once per address, and not at all when a named member has
// that address (it is that node). Names are compared as given.
func MergeMembers(static []Member, found ...[]Member) []Member {
	ms, _ := mergeMembers(static, found...)
	return ms
}

// MemberConflict is a name found with two addresses: Kept is used,
// Dropped is not.
type MemberConflict struct {
	Name, Kept, Dropped string
}

func mergeMembers(static []Member, found ...[]Member) ([]Member, []MemberConflict) {
	byName := make(map[string]string)
	var named, nameless []Member
	var conflicts []MemberConflict
	add := func(set []Member) {
		set = canonicalMembers(slices.Clone(set))
		for _, m := range set {
			if m.Name == "" {
				nameless = append(nameless, m)
				continue
			}
			kept, ok := byName[m.Name]
			switch {
			case !ok:
				byName[m.Name] = m.Addr
				named = append(named, m)
			case kept != m.Addr:
				conflicts = append(conflicts, MemberConflict{Name: m.Name, Kept: kept, Dropped: m.Addr})
			}
		}
	}
	add(static)
	for _, set := range found {
		add(set)
	}
	taken := make(map[string]bool, len(named))
	for _, m := range named {
		taken[m.Addr] = true
	}
	out := canonicalMembers(named)
	nameless = canonicalMembers(nameless)
	for _, m := range nameless {
		if !taken[m.Addr] {
			out = append(out, m)
		}
	}
	return out, conflicts
}

// Merger is MergeMembers that logs each conflict once: when it first
// appears, and again only if it goes away and comes back. Safe for
// concurrent use.
type Merger struct {
	log    *zap.Logger
	mu     sync.Mutex
	logged map[MemberConflict]bool
}

// NewMerger makes a Merger logging to log (nil: nowhere).
func NewMerger(log *zap.Logger) *Merger {
	if log == nil {
		log = zap.NewNop()
	}
	return &Merger{log: log}
}

// Merge is MergeMembers, logging the conflicts not logged yet.
func (m *Merger) Merge(static []Member, found ...[]Member) []Member {
	ms, conflicts := mergeMembers(static, found...)
	m.mu.Lock()
	defer m.mu.Unlock()
	now := make(map[MemberConflict]bool, len(conflicts))
	for _, c := range conflicts {
		if !m.logged[c] {
			m.log.Warn("peer found with two addresses; using the first (a static peer line wins over DNS)",
				zap.String("name", c.Name), zap.String("kept", c.Kept), zap.String("dropped", c.Dropped))
		}
		now[c] = true
	}
	m.logged = now
	return ms
}
