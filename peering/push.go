package peering

import (
	"fmt"
)

// Spreading hot paths (the director's side: package spread; the nodes':
// cluster/push.go) takes two control frames, in the type numbers 16-19
// kept for it:
//
//   - SPREAD (16), dialer → acceptor, on the dialer's control stream after
//     the HELLOs, like PURGE: a director tells a content node to carry a
//     path it does not hold (fetch its bytes from the holder and keep them
//     hot) or to stop carrying it. Payload: flags (1: carry), path.
//   - HELD (17), acceptor → dialer, on the control stream the dialer
//     opened, like STATE: a node tells the director that dialled it that
//     it holds a path's bytes at a version (it may be sent its requests),
//     or no longer holds them. Payload: flags (1: held), path, version.
//
// A receiver that predates them skips them (unknown control frames are
// ignored): a director then never routes a spread path to such a node,
// since no HELD comes back.
const (
	frameSpread frameType = 16
	frameHeld   frameType = 17
)

const spreadOn = 1 << 0

// SpreadKind says which frame a Spread travels in.
type SpreadKind uint8

// Spread kinds.
const (
	// SpreadCarry: carry the path (Carry true) or stop (Carry false). From
	// a director to a content node.
	SpreadCarry SpreadKind = 1
	// SpreadHeld: the sender holds the path's bytes at Version (Carry
	// true) or no longer does (Carry false). From a content node to the
	// director that asked.
	SpreadHeld SpreadKind = 2
)

// Spread is one SPREAD or HELD message.
type Spread struct {
	Kind    SpreadKind
	Path    string
	Carry   bool
	Version string // SpreadHeld only
}

func appendSpread(b []byte, s *Spread) ([]byte, error) {
	if err := checkLen(s.Path, maxPathLen); err != nil {
		return b, err
	}
	if err := checkLen(s.Version, maxFieldLen); err != nil {
		return b, err
	}
	t := frameSpread
	if s.Kind == SpreadHeld {
		t = frameHeld
	} else if s.Kind != SpreadCarry {
		return b, errBadValue
	}
	b, start := beginFrame(b, t)
	var flags byte
	if s.Carry {
		flags |= spreadOn
	}
	b = append(b, flags)
	b = appendStr(b, s.Path)
	if t == frameHeld {
		b = appendStr(b, s.Version)
	}
	return endFrame(b, start)
}

func decodeSpread(t frameType, p []byte) (Spread, error) {
	r := newReader(p)
	s := Spread{Kind: SpreadCarry}
	flags := r.byte()
	s.Carry = flags&spreadOn != 0
	s.Path = r.str(maxPathLen)
	if t == frameHeld {
		s.Kind = SpreadHeld
		s.Version = r.str(maxFieldLen)
	}
	if r.err == nil && (flags&^spreadOn != 0 || s.Path == "") {
		return s, errBadValue
	}
	return s, r.done()
}

// receiveSpread decodes a SPREAD or HELD frame from peer and hands it to
// Config.OnSpread. A malformed one is a protocol error.
func (n *Node) receiveSpread(peer string, t frameType, payload []byte) error {
	s, err := decodeSpread(t, payload)
	if err != nil {
		return err
	}
	if f := n.cfg.OnSpread; f != nil {
		f(peer, s)
	}
	return nil
}

// SendSpread sends s to the node named to: a SpreadCarry over the
// connection this node dialled to it (a director dials every content
// node), a SpreadHeld over the control streams of the connections to
// dialled to this node (every one of them that carries that name). Like
// a purge, it is queued, not waited for, and lost if no such connection
// is up: it reports whether it was queued somewhere.
func (n *Node) SendSpread(to string, s Spread) (bool, error) {
	b, err := appendSpread(nil, &s)
	if err != nil {
		return false, fmt.Errorf("peering: spread message for %.64q: %w", s.Path, err)
	}
	if s.Kind == SpreadCarry {
		p := n.lookup(to)
		if p == nil {
			return false, nil
		}
		q := p.out.Load()
		if q == nil {
			return false, nil
		}
		q.enqueue(b)
		return true, nil
	}
	sent := false
	n.mu.Lock()
	defer n.mu.Unlock()
	for sub := range n.subs {
		if sub.name == to {
			sub.enqueue(b)
			sent = true
		}
	}
	return sent, nil
}
