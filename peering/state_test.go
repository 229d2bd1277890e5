package peering

import (
	"net"
	"strings"
	"testing"
	"time"
)

// TestState: a node's State reaches its peers in HELLO (PeerState.State
// and EventUp) and after SetState as EventState, in order with what it
// published before; a node that connects later gets the current State; an
// invalid State is refused; the State is kept while the peer is down.
func TestState(t *testing.T) {
	t.Parallel()
	s1 := State{Epoch: 7, Groups: []GroupState{{Name: "/srv/b", Ready: true}, {Name: "/srv/a"}}} // unsorted: Listen sorts
	s1sorted := State{Epoch: 7, Groups: []GroupState{{Name: "/srv/a"}, {Name: "/srv/b", Ready: true}}}
	s2 := State{Epoch: 7, Groups: []GroupState{{Name: "/srv/a", Ready: true}}}
	initial := []State{s1, s2, {}}
	nodes := startCluster(t, []string{"n1", "n2", "n3"}, func(i int, c *Config) { c.State = initial[i] })
	waitUp(t, nodes)
	want := map[string]State{"n1": s1sorted, "n2": s2, "n3": {}}
	if got := nodes[0].State(); !got.Equal(s1sorted) {
		t.Fatalf("n1.State() = %+v", got)
	}
	for _, n := range nodes {
		for _, p := range n.Peers() {
			if !p.State.Equal(want[p.Name]) {
				t.Errorf("%s sees %s in state %+v, want %+v", n.Name(), p.Name, p.State, want[p.Name])
			}
		}
	}
	var i2, i3 int
	if e := nodes[1].rec.wait(t, &i2, time.Second, kind(EventUp, "n1")); !e.State.Equal(s1sorted) {
		t.Errorf("EventUp.State %+v", e.State)
	}
	nodes[1].rec.wait(t, &i2, 2*time.Second, kind(EventSnapshot, "n1"))
	nodes[2].rec.wait(t, &i3, 2*time.Second, kind(EventSnapshot, "n1"))

	// A delta published before SetState arrives before the EventState.
	s1b := State{Epoch: 8, Groups: []GroupState{{Name: "/srv/a", Ready: true}, {Name: "/srv/b", Ready: true}, {Name: "/srv/c"}}}
	m := nodes[0].backend.put("/srv/c", Meta{Path: "/x", Version: "1"}, []byte("x"))
	nodes[0].Publish(Delta{Group: "/srv/c", Upserts: []Meta{m}})
	nodes[0].SetState(s1b)
	if got := nodes[0].State(); !got.Equal(s1b) {
		t.Fatalf("n1.State() = %+v after SetState", got)
	}
	for _, tn := range []struct {
		n    *testNode
		from *int
	}{{nodes[1], &i2}, {nodes[2], &i3}} {
		e := tn.n.rec.wait(t, tn.from, 2*time.Second, func(e Event) bool {
			return e.Peer == "n1" && (e.Kind == EventDelta || e.Kind == EventState)
		})
		if e.Kind != EventDelta || e.Delta.Group != "/srv/c" {
			t.Fatalf("%s: first event %v %+v, want the delta", tn.n.Name(), e.Kind, e)
		}
		if e := tn.n.rec.wait(t, tn.from, 2*time.Second, kind(EventState, "n1")); !e.State.Equal(s1b) {
			t.Errorf("%s: EventState %+v", tn.n.Name(), e.State)
		}
		if p := peerState(t, tn.n.Node, "n1"); !p.State.Equal(s1b) || !p.Up {
			t.Errorf("%s sees n1 as %+v", tn.n.Name(), p)
		}
	}

	// The caller's slice is copied, in and out.
	s1b.Groups[0].Name = "/changed"
	nodes[0].State().Groups[1].Name = "/changed"
	peerState(t, nodes[1].Node, "n1").State.Groups[2].Name = "/changed"
	if got := nodes[0].State(); got.Groups[0].Name != "/srv/a" || got.Groups[1].Name != "/srv/b" {
		t.Errorf("State() shares memory: %+v", got)
	}
	if got := peerState(t, nodes[1].Node, "n1").State; got.Groups[2].Name != "/srv/c" {
		t.Errorf("PeerState.State shares memory: %+v", got)
	}

	// The same State again sends nothing; invalid States are refused.
	cur := nodes[0].State()
	states := nodes[1].rec.count(kind(EventState, "n1"))
	nodes[0].SetState(cur)
	many := make([]GroupState, maxGroups+1)
	for i := range many {
		many[i].Name = strings.Repeat("g", i+1)
	}
	for _, bad := range []State{
		{Epoch: 9, Groups: many},
		{Epoch: 9, Groups: []GroupState{{Name: "a"}, {Name: "a"}}},
		{Epoch: 9, Groups: []GroupState{{Name: ""}}},
		{Epoch: 9, Groups: []GroupState{{Name: strings.Repeat("x", maxFieldLen+1)}}},
	} {
		nodes[0].SetState(bad)
	}
	if got := nodes[0].State(); !got.Equal(cur) {
		t.Errorf("State() = %+v after invalid SetState calls", got)
	}
	// A marker: every frame queued before it has arrived when it does.
	nodes[0].SetState(State{Epoch: 10})
	nodes[1].rec.wait(t, &i2, 2*time.Second, func(e Event) bool { return e.Kind == EventState && e.State.Epoch == 10 })
	if c := nodes[1].rec.count(kind(EventState, "n1")); c != states+1 {
		t.Errorf("%d state events, want %d", c, states+1)
	}
	nodes[0].SetState(cur)

	// A node that connects afterwards (an observer), and a peer that
	// restarts, get the current State in HELLO.
	obs, rec := startObserver(t, "director", nodes[:1])
	var j int
	if e := rec.wait(t, &j, 2*time.Second, kind(EventUp, "n1")); !e.State.Equal(cur) {
		// The observer may have connected before the last SetState.
		e = rec.wait(t, &j, 2*time.Second, kind(EventState, "n1"))
		if !e.State.Equal(cur) {
			t.Errorf("observer: %+v", e.State)
		}
	}
	if p := waitPeer(t, obs, "n1", func(p PeerState) bool { return p.Up }); !p.State.Equal(cur) {
		t.Errorf("observer sees %+v", p)
	}
	nodes[2].Close()
	waitPeer(t, nodes[0].Node, "n3", func(p PeerState) bool { return !p.Up })
	pc, err := net.ListenPacket("udp", nodes[2].addr)
	if err != nil {
		t.Fatal(err)
	}
	n3 := listenNode(t, "n3", pc, []Peer{{"n1", nodes[0].addr}}, func(c *Config) { c.State = State{Epoch: 8} })
	var k int
	if e := n3.rec.wait(t, &k, 2*time.Second, kind(EventUp, "n1")); !e.State.Equal(cur) {
		t.Errorf("restarted n3: EventUp.State %+v, want %+v", e.State, cur)
	}
	if p := peerState(t, n3.Node, "n1"); !p.State.Equal(cur) {
		t.Errorf("restarted n3 sees %+v", p)
	}
	// n1 re-dials n3 and sees its new State.
	waitPeer(t, nodes[0].Node, "n3", func(p PeerState) bool { return p.Up && p.State.Epoch == 8 })

	// Kept while the peer is down.
	nodes[0].Close()
	if p := waitPeer(t, nodes[1].Node, "n1", func(p PeerState) bool { return !p.Up }); !p.State.Equal(cur) {
		t.Errorf("down n1 seen as %+v", p)
	}
}

func TestListenBadState(t *testing.T) {
	creds := credsFor(t, testSecret, "n1")
	for _, s := range []State{
		{Groups: []GroupState{{Name: "a"}, {Name: "a"}}},
		{Groups: []GroupState{{}}},
		{Groups: make([]GroupState, maxGroups+1)},
	} {
		if n, err := Listen(Config{Name: "n1", TLS: creds, Addr: "127.0.0.1:0", State: s}); err == nil {
			n.Close()
			t.Errorf("State %.80v accepted", s)
		} else {
			t.Log(err)
		}
	}
}
