package peering

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/quic-go/quic-go"
	"go.uber.org/zap"
)

// Peers listed by address only (Peer.Name ""), e.g. from DNS records.
//
// Such a peer is dialled for any name (clientConfigAnyName: the chain to
// the cluster CA is verified, the name is not), and its name is the one in
// its HELLO, which must be one of its certificate's DNS names. The name is
// then claimed: entered in Node.learned, through which Fetch finds the
// peer, and carried by the peer's events. At most one peer raises events
// under a name at a time, and when the name passes from one peer to
// another, the first one's last event comes before the second one's
// first:
//
//   - a configured (named) peer always holds its name: a peer listed by
//     address that learns it is a duplicate (claimName refuses it), and
//     one that held it before SetPeers configured the name gives it up
//     (yieldName) and the configured peer waits for its session to end;
//   - a peer listed by address holds its learned name while a session of
//     it under that name runs (peer.active) and, once that ends, until
//     another such peer learns the name on a live connection (the name
//     moved: that node now answers at another address) or its own next
//     HELLO carries another name (another node answers at its address);
//   - a peer that SetPeers removes leaves its name in Node.draining until
//     its dial loop has returned: whoever next takes the name waits for
//     that (drainWait).

// errNameConfigured ends the session of a peer listed by address whose
// name SetPeers gave to a configured peer.
var errNameConfigured = errors.New("its name is now configured for another address")

// nameConflict is why a peer listed by address was not admitted: the name
// in its HELLO is already tracked.
type nameConflict struct {
	name  string
	other string // the address the name is tracked at (ours if self)
	// self: the name is this node's; configured: a configured peer's;
	// neither: another peer listed by address holds it on a live
	// connection.
	self, configured bool
}

func (c *nameConflict) Error() string {
	switch {
	case c.self:
		return fmt.Sprintf("name %q is this node's own (at %s)", c.name, c.other)
	case c.configured:
		return fmt.Sprintf("name %q is a configured peer's (at %s)", c.name, c.other)
	}
	return fmt.Sprintf("name %q is already connected at %s", c.name, c.other)
}

// admit checks the name in the HELLO of a peer we dialled and sets the
// name s's events carry. anyName says the connection was dialled for any
// name: the name must then be one of the peer's certificate's names. A
// peer listed by name must send its name; one listed by address claims
// the name it sends (claimName), once the name's previous holder, if
// removed, has delivered its last event. fresh reports that the name is
// new for p: EventNamed is due.
func (n *Node) admit(p *peer, s *sess, conn *quic.Conn, name string, anyName bool) (fresh bool, err error) {
	if anyName {
		if names := certNames(conn); !slices.Contains(names, name) {
			return false, fmt.Errorf("%w: hello from %q, which its certificate does not name (%q)", errBadIdentity, name, names)
		}
	}
	for {
		n.mu.Lock()
		if err := s.ctx.Err(); err != nil {
			n.mu.Unlock()
			return false, err
		}
		if !p.byAddr.Load() {
			want := p.nameNow()
			n.mu.Unlock()
			if name != want {
				return false, fmt.Errorf("%w: dialled %q, hello from %q", errBadIdentity, want, name)
			}
			s.name = name
			return false, nil
		}
		wait := n.drainWait(name)
		if wait == nil {
			fresh, err := n.claimName(p, s, name)
			n.mu.Unlock()
			if err == nil {
				s.log = n.log.With(zap.String("peer", name), zap.String("peer_addr", p.addr))
			}
			return fresh, err
		}
		n.mu.Unlock()
		select {
		case <-wait:
		case <-s.ctx.Done():
		}
	}
}

// claimName makes p, a peer listed by address, the holder of name for the
// session s, unless the name is this node's, a configured peer's, or held
// by another peer listed by address on a live session (a *nameConflict).
// A holder that is down gives it up (the node moved to p's address). The
// name p held before, if another, is released. fresh reports whether name
// is new for p. Called with n.mu held.
func (n *Node) claimName(p *peer, s *sess, name string) (fresh bool, err error) {
	if name == n.cfg.Name {
		return false, &nameConflict{name: name, other: n.pc.LocalAddr().String(), self: true}
	}
	if q := n.peers.Load().byName[name]; q != nil {
		return false, &nameConflict{name: name, other: q.addr, configured: true}
	}
	learned := *n.learned.Load()
	q := learned[name]
	if q != nil && q != p && q.active != nil {
		return false, &nameConflict{name: name, other: q.addr}
	}
	learned = maps.Clone(learned)
	if q != nil && q != p {
		empty := ""
		q.name.Store(&empty)
		n.log.Info("a peer's name now answers at another address", zap.String("peer", name),
			zap.String("old_addr", q.addr), zap.String("peer_addr", p.addr))
	}
	prev := p.nameNow()
	if prev != "" && prev != name && learned[prev] == p {
		delete(learned, prev)
	}
	learned[name] = p
	n.learned.Store(&learned)
	p.name.Store(&name)
	p.active = make(chan struct{})
	p.endSession = s.cancel
	s.name, s.active = name, p.active
	return prev != name, nil
}

// endSession ends s's hold on p's name, after its last event: whoever
// waits to take the name over (yieldName) goes ahead.
func (n *Node) endSession(p *peer, s *sess) {
	if s.active == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if p.active == s.active {
		p.active, p.endSession = nil, nil
	}
	close(s.active)
}

// yieldName takes the name h (a peer listed by address) holds away from
// it, and ends its session under that name with cause. The caller removes
// the name from Node.learned. It returns a channel closed after that
// session's last event, nil if none runs. Called with n.mu held.
func (n *Node) yieldName(h *peer, cause error) <-chan struct{} {
	empty := ""
	h.name.Store(&empty)
	if h.active == nil {
		return nil
	}
	h.endSession(cause)
	return h.active
}

// drainWait returns the done channel of a removed peer that held name and
// has not finished yet, nil if there is none. Called with n.mu held.
func (n *Node) drainWait(name string) <-chan struct{} {
	ch, ok := n.draining[name]
	if !ok {
		return nil
	}
	select {
	case <-ch:
		delete(n.draining, name)
		return nil
	default:
		return ch
	}
}
