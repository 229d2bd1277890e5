package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/shardcache/caddy-shardcache/peering"
)

// heldLog records the HELD messages a director receives.
type heldLog struct {
	mu  sync.Mutex
	got []string
}

func (l *heldLog) on(from string, s peering.Spread) {
	l.mu.Lock()
	defer l.mu.Unlock()
	v := s.Version
	if !s.Carry {
		v = "off"
	}
	l.got = append(l.got, from+" "+s.Path+" "+v)
}

func (l *heldLog) has(want string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, g := range l.got {
		if g == want {
			return true
		}
	}
	return false
}

// TestCarry: a director tells a member to carry a path the other node
// owns; the member fetches it into its hot cache before any request and
// says HELD with its version; the member then serves it as a hot hit. A
// new version on the owner is announced (HELD off), fetched and announced
// again, and never served stale; SPREAD off makes the member forget it.
func TestCarry(t *testing.T) {
	root, paths := site(t, 20)
	nodes := newNodes(t, "n1", "n2")
	nodes[0].start(t, "g", root)
	nodes[1].start(t, "g", copySite(t, root, paths))
	waitFor(t, "tables", func() bool { return nodes[0].trustsAll(nodes, "g") && nodes[1].trustsAll(nodes, "g") })

	var peers []peering.Peer
	for _, n := range nodes {
		peers = append(peers, peering.Peer{Name: n.name, Addr: n.addr})
	}
	dir := New(Config{Name: "director", Addr: "127.0.0.1:0", Observer: true, Logger: zap.NewNop()},
		NewMembership("director", true, peers, 1))
	t.Cleanup(func() { dir.Close() })
	creds, err := peering.CredentialsFromSecret(testSecret, "director")
	if err != nil {
		t.Fatal(err)
	}
	if err := dir.Start(creds, ""); err != nil {
		t.Fatal(err)
	}
	var held heldLog
	remove := dir.OnHeld(held.on)
	defer remove()
	waitFor(t, "director connected", func() bool {
		for _, p := range dir.Node().Peers() {
			if !p.Up {
				return false
			}
		}
		return true
	})

	p := pathOf(t, nodes[0].m, "n1", "/f%03d.txt")
	owner, member := nodes[0], nodes[1]
	g := member.c.Group("g")
	e, _ := g.entry(p)
	v1 := e.Item.Version()
	if !dir.SendSpread("n2", p, true) {
		t.Fatal("SPREAD not queued")
	}
	waitFor(t, "HELD "+p+" from n2", func() bool { return held.has("n2 " + p + " " + v1) })
	if !g.Hot().Contains(p, v1) {
		t.Fatalf("n2 said HELD but holds no copy of %s@%s", p, v1)
	}
	if st := member.c.PushStats(); st.Carried != 1 || st.Items != 1 || st.Bytes != int64(len(strings.Repeat(p, 10))) {
		t.Errorf("push stats %+v; want 1 carried, 1 item of %d bytes", st, len(strings.Repeat(p, 10)))
	}
	body, tier, err := member.get(p)
	if err != nil || tier != TierHot || string(body) != strings.Repeat(p, 10) {
		t.Fatalf("first GET %s on n2 after the push: tier %v, %q, %v; want a hot hit", p, tier, body, err)
	}

	// A new version on the owner.
	newBody := strings.Repeat("new", 20)
	if err := os.WriteFile(filepath.Join(owner.root, p), []byte(newBody), 0o644); err != nil {
		t.Fatal(err)
	}
	owner.store.Refresh(p, false)
	var v2 string
	waitFor(t, "n2's table lists the new version", func() bool {
		e, ok := g.entry(p)
		v2 = e.Item.Version()
		return ok && v2 != v1
	})
	body, _, err = member.get(p)
	if err != nil || string(body) != newBody {
		t.Fatalf("GET %s on n2 after the change: %q, %v; want the new bytes", p, body, err)
	}
	waitFor(t, "HELD of the new version", func() bool { return held.has("n2 " + p + " " + v2) })
	if !g.Hot().Contains(p, v2) {
		t.Fatal("new version announced but not held")
	}

	dir.SendSpread("n2", p, false)
	waitFor(t, "n2 forgets the path", func() bool { return len(member.c.carriedPaths()) == 0 })
	if _, ok := member.c.Carries(p); ok {
		t.Fatal("Carries after SPREAD off")
	}

	// A path the member owns itself is held at once; an unknown one never.
	own := pathOf(t, nodes[0].m, "n2", "/f%03d.txt")
	dir.SendSpread("n2", own, true)
	dir.SendSpread("n2", "/nope.txt", true)
	waitFor(t, "HELD of n2's own path", func() bool {
		it := member.store.Published(own)
		return it != nil && held.has("n2 "+own+" "+it.Version())
	})
	time.Sleep(3 * carryTick)
	if held.has("n2 /nope.txt ") {
		t.Error("HELD for a path that does not exist")
	}
}
