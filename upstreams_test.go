package shardcache

import (
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/shardcache/caddy-shardcache/cluster"
	"github.com/shardcache/caddy-shardcache/peering"
)

func TestUpstreamsUnmarshalCaddyfile(t *testing.T) {
	var u Upstreams
	if err := u.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`shardcache`)); err != nil {
		t.Errorf("dynamic shardcache: %v", err)
	}
	for input, word := range map[string]string{
		`shardcache extra`:              "extra",
		`shardcache n1 n2`:              "n1",
		"shardcache {\n\trefresh 1s\n}": "refresh",
	} {
		err := new(Upstreams).UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
		if err == nil || !strings.Contains(err.Error(), "'"+word+"'") {
			t.Errorf("dynamic %q: error %v; want one naming '%s'", input, err, word)
		}
	}
}

// TestUpstreamsList checks which peers become upstreams, in which order,
// and that the list is rebuilt exactly when the table changes.
func TestUpstreamsList(t *testing.T) {
	u := &Upstreams{last: new(atomic.Pointer[upstreamList])}
	ring := peering.NewRing(0, nil, "n1", "n2", "n3", "n4")
	peers := []peering.PeerState{
		{Name: "n3", Lan: "10.0.1.3:80", Up: true, Ready: true},
		{Name: "n1", Lan: "10.0.1.1:80"},             // down: listed
		{Name: "n2", Lan: "", Up: true, Ready: true}, // no lan yet: not listed
		{Name: "obs", Lan: "10.0.1.9:80", Up: true},  // not in the ring: not listed
		{Name: "n4", Lan: "10.0.1.3:80", Up: true},   // same site as n3: one upstream
	}
	l := u.list(ring, peers)
	if want := []string{"10.0.1.1:80", "10.0.1.3:80"}; !slices.Equal(l.dials, want) {
		t.Fatalf("dials %q; want %q", l.dials, want)
	}
	// Readiness and liveness change nothing.
	again := slices.Clone(peers)
	again[0].Up, again[1].Up, again[2].Ready = false, true, false
	if u.list(ring, again) != l {
		t.Error("a table that differs only in Up/Ready made a new list")
	}
	// A member that advertises its site joins; one that changes it moves.
	again[2].Lan = "10.0.1.2:80"
	l2 := u.list(ring, again)
	if want := []string{"10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"}; !slices.Equal(l2.dials, want) {
		t.Errorf("after n2 advertised: %q; want %q", l2.dials, want)
	}
	again[0].Lan = "10.0.1.33:80"
	if want := []string{"10.0.1.1:80", "10.0.1.2:80", "10.0.1.33:80", "10.0.1.3:80"}; !slices.Equal(u.list(ring, again).dials, want) {
		t.Errorf("after n3 moved: %q; want %q", u.last.Load().dials, want)
	}
	// A new ring (reload removing n1) is a new list.
	small := peering.NewRing(0, nil, "n2", "n3", "n4")
	if want := []string{"10.0.1.2:80", "10.0.1.33:80", "10.0.1.3:80"}; !slices.Equal(u.list(small, again).dials, want) {
		t.Errorf("after n1 left the ring: %q; want %q", u.last.Load().dials, want)
	}
	if got := u.list(small, nil).dials; len(got) != 0 {
		t.Errorf("an empty table: %q", got)
	}
}

// TestUpstreamsFromPeering runs two content nodes advertising their sites
// and an observer on loopback QUIC: the observer's upstreams are the two
// sites, new values on each call, and a node that stops stays listed.
func TestUpstreamsFromPeering(t *testing.T) {
	const secret = "upstreams-test-secret-0123456789"
	names := []string{"n2", "n1", "d"}
	conns := map[string]net.PacketConn{}
	addrs := map[string]string{}
	for _, name := range names {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		conns[name], addrs[name] = pc, pc.LocalAddr().String()
	}
	lans := map[string]string{"n1": "127.0.0.1:8001", "n2": "127.0.0.1:8002"}
	nodes := map[string]*cluster.Cluster{}
	for _, name := range names {
		var peers []peering.Peer
		for _, o := range []string{"n1", "n2"} {
			if o != name {
				peers = append(peers, peering.Peer{Name: o, Addr: addrs[o]})
			}
		}
		observer := name == "d"
		pc := conns[name]
		c := cluster.New(cluster.Config{Name: name, Addr: addrs[name], Observer: observer,
			Peering: func(c *peering.Config) {
				c.PacketConn = pc
				c.IdleTimeout = 500 * time.Millisecond
			}}, cluster.NewMembership(name, observer, peers, 1))
		t.Cleanup(func() { c.Close() })
		nodes[name] = c
	}
	u := &Upstreams{c: &clusterRef{Cluster: nodes["d"]}, last: new(atomic.Pointer[upstreamList])}
	if _, err := u.GetUpstreams(nil); err == nil {
		t.Error("GetUpstreams before the node runs: no error")
	}
	for _, name := range names {
		creds, err := peering.CredentialsFromSecret(secret, name)
		if err != nil {
			t.Fatal(err)
		}
		if err := nodes[name].Start(creds, lans[name]); err != nil {
			t.Fatal(err)
		}
	}
	dials := func() []string {
		ups, err := u.GetUpstreams(nil)
		if err != nil {
			return []string{err.Error()}
		}
		var out []string
		for _, up := range ups {
			out = append(out, up.Dial)
		}
		return out
	}
	want := []string{lans["n1"], lans["n2"]}
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Equal(dials(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("the observer's upstreams: %q after 10s; want %q", dials(), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
	a, _ := u.GetUpstreams(nil)
	b, _ := u.GetUpstreams(nil)
	for i := range a {
		if a[i] == b[i] {
			t.Errorf("upstream %s: the same value on two calls; reverse_proxy writes to it per request", a[i].Dial)
		}
	}

	nodes["n2"].Close()
	deadline = time.Now().Add(10 * time.Second)
	for {
		down := false
		for _, p := range nodes["d"].Node().Peers() {
			down = down || (p.Name == "n2" && !p.Up)
		}
		if down {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the observer does not see n2 down within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := dials(); !slices.Equal(got, want) {
		t.Errorf("with n2 down: %q; want %q (the policy skips it)", got, want)
	}
}

// BenchmarkGetUpstreams measures a call on an unchanged table (the
// request path).
func BenchmarkGetUpstreams(b *testing.B) {
	u := &Upstreams{last: new(atomic.Pointer[upstreamList])}
	ring := peering.NewRing(0, nil, "n1", "n2", "n3", "n4", "n5")
	var peers []peering.PeerState
	for _, n := range ring.Nodes() {
		peers = append(peers, peering.PeerState{Name: n, Lan: "10.0.1." + n[1:] + ":80", Up: true, Ready: true})
	}
	b.ReportAllocs()
	for b.Loop() {
		l := u.list(ring, peers)
		out := make([]*reverseproxy.Upstream, len(l.dials))
		for i, d := range l.dials {
			out[i] = &reverseproxy.Upstream{Dial: d}
		}
	}
}
