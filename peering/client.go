package peering

import (
	"context"
	"errors"
	"fmt"
	"io"
	weakrand "math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"go.uber.org/zap"
)

// peer is a configured peer and our one connection to it. SetPeers
// replaces it by a new one when its address changes.
type peer struct {
	addr string
	// byAddr: listed by address only (Peer.Name ""); its name is learned
	// from its HELLO (claimName). Cleared, under Node.mu, when SetPeers
	// lists the same address under the name it learned.
	byAddr atomic.Bool
	// name is the configured name or, for a peer listed by address, the
	// name it holds in Node.learned ("" before it is learned, after a
	// conflict, and after another peer took the name over). Stored under
	// Node.mu; never nil.
	name atomic.Pointer[string]
	// active is open while a session of this peer (listed by address)
	// holds its name, and closed after that session's last event;
	// endSession ends that session. Both under Node.mu, nil otherwise.
	active     chan struct{}
	endSession context.CancelCauseFunc

	// ctx ends when the node closes or SetPeers removes or replaces the
	// peer (the cause says which); its dial loop then closes the
	// connection and returns, and closes done.
	ctx    context.Context
	cancel context.CancelCauseFunc
	done   chan struct{}

	conn     atomic.Pointer[quic.Conn] // nil while down
	out      atomic.Pointer[outQueue]  // our control stream's writer; nil while down
	ready    atomic.Bool
	lastSeen atomic.Int64           // unix nanos
	lan      atomic.Pointer[string] // from its last HELLO or LAN frame
	st       atomic.Pointer[State]  // from its last HELLO or STATE frame; never modified
}

// nameNow returns the peer's name as it is now ("" for a peer listed by
// address that holds none).
func (p *peer) nameNow() string { return *p.name.Load() }

func (p *peer) state() PeerState {
	name := p.nameNow()
	s := PeerState{Name: name, Addr: p.addr, Discovered: name != "" && p.byAddr.Load(), Up: p.conn.Load() != nil, Ready: p.ready.Load()}
	if ns := p.lastSeen.Load(); ns != 0 {
		s.LastSeen = time.Unix(0, ns)
	}
	if lan := p.lan.Load(); lan != nil {
		s.Lan = *lan
	}
	if st := p.st.Load(); st != nil {
		s.State = st.Clone()
	}
	return s
}

func (p *peer) seen() { p.lastSeen.Store(time.Now().UnixNano()) }

// peerLog is the logger of p's dial loop: its name, if known, and address.
func (n *Node) peerLog(p *peer) *zap.Logger {
	if name := p.nameNow(); name != "" {
		return n.log.With(zap.String("peer", name), zap.String("peer_addr", p.addr))
	}
	return n.log.With(zap.String("peer_addr", p.addr))
}

// dupRecheck is how long a peer listed by address whose node turned out to
// be tracked already (a name conflict, see claimName) waits before it is
// dialled again, to see whether another node answers there now.
const dupRecheck = 30 * time.Second

// dialLoop keeps one connection to p: it dials, runs the control session
// until the connection dies, and dials again with exponential backoff
// (capped at maxBackoff) while the peer is unreachable. It returns when
// p.ctx ends. It first waits for every channel of wait to close: those
// of the peers that held p's name before (a peer p replaces, one removed,
// one listed by address that gave the name up), so that their events all
// come before p's.
//
// A peer listed by address whose node is this one is not dialled again
// while it stays listed; one whose node is tracked already under its name
// is dialled again after dupRecheck. Both are logged at WARN when first
// found, and again whenever the conflict changes.
func (n *Node) dialLoop(p *peer, wait []<-chan struct{}) {
	defer n.wg.Done()
	defer close(p.done)
	for _, ch := range wait {
		<-ch // cancelled or told to end before p was started: it ends soon
	}
	backoff := minBackoff
	failures := 0
	conflict := "" // the last name conflict logged
	for p.ctx.Err() == nil {
		log := n.peerLog(p)
		conn, anyName, err := n.dial(p)
		if err != nil {
			if p.ctx.Err() != nil {
				return
			}
			failures++
			if failures == 1 {
				log.Warn("dialling peer failed; retrying", zap.Error(err))
			} else {
				log.Debug("dialling peer failed", zap.Error(err), zap.Int("attempt", failures))
			}
			// ±20% jitter so that restarted nodes do not dial in step.
			d := time.Duration(float64(backoff) * (0.8 + 0.4*weakrand.Float64()))
			select {
			case <-time.After(d):
			case <-p.ctx.Done():
				return
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff, failures = minBackoff, 0
		err = n.session(p, conn, anyName, log)
		var nc *nameConflict
		if !errors.As(err, &nc) {
			conflict = ""
			continue
		}
		lvl := zap.WarnLevel
		if nc.Error() == conflict {
			lvl = zap.DebugLevel
		}
		conflict = nc.Error()
		if nc.self {
			if ce := log.Check(lvl, "the node listed at this address is this node itself; not dialled again while listed"); ce != nil {
				ce.Write(zap.String("name", nc.name), zap.String("addr", nc.other))
			}
			<-p.ctx.Done()
			return
		}
		if ce := log.Check(lvl, "the node listed at this address is tracked already under its name; not tracked twice"); ce != nil {
			ce.Write(zap.String("name", nc.name), zap.String("other_addr", nc.other), zap.Bool("configured", nc.configured),
				zap.Duration("recheck_in", dupRecheck))
		}
		select {
		case <-time.After(dupRecheck):
		case <-p.ctx.Done():
			return
		}
	}
}

// dial dials p: for the name it is configured under, or for any name in
// the cluster CA's leaves if it is listed by address only (anyName).
func (n *Node) dial(p *peer) (_ *quic.Conn, anyName bool, _ error) {
	addr, err := net.ResolveUDPAddr("udp", p.addr)
	if err != nil {
		return nil, false, fmt.Errorf("resolving %s: %w", p.addr, err)
	}
	qc := *n.qconf
	qc.MaxIncomingStreams = -1 // the acceptor never opens streams to us
	serverName := ""
	if !p.byAddr.Load() {
		serverName = p.nameNow()
	}
	conn, err := n.tr.Dial(p.ctx, addr, n.clientTLS(serverName), &qc)
	return conn, serverName == "", err
}

// sess is one control session of a peer: its context (ended by p.ctx, or
// by SetPeers giving the name it holds to a configured peer), the name its
// events carry once admitted, and its logger.
type sess struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	name   string
	active chan struct{} // p.active, if the session claimed a learned name
	log    *zap.Logger
}

// session runs the control stream of a fresh connection to p: HELLO both
// ways, then the peer's snapshot and updates, turned into Events. It
// returns when the connection dies, and leaves p down. anyName says the
// connection was dialled for any name (p listed by address). It returns
// the error that ended the session; a *nameConflict if the peer was not
// admitted.
func (n *Node) session(p *peer, conn *quic.Conn, anyName bool, log *zap.Logger) error {
	ctx, cancel := context.WithCancelCause(p.ctx)
	defer cancel(nil)
	s := &sess{ctx: ctx, cancel: cancel, log: log}
	stop := context.AfterFunc(ctx, func() { n.closeStopped(ctx, conn) })
	defer stop()
	defer n.endSession(p, s)
	err := n.runSession(p, s, conn, anyName)
	log = s.log
	wasUp := p.conn.Swap(nil) != nil
	p.ready.Store(false)
	p.seen()
	code, msg := CloseGone, "connection lost"
	var nc *nameConflict
	if errors.Is(err, errProtocol) {
		code, msg = CloseProtocolError, err.Error()
	} else if errors.Is(err, errBadIdentity) {
		code, msg = CloseBadIdentity, err.Error()
	} else if errors.As(err, &nc) {
		code, msg = CloseDuplicate, "already connected under that name"
	}
	if ctx.Err() != nil {
		n.closeStopped(ctx, conn)
	} else {
		conn.CloseWithError(code, msg)
	}
	if n.ctx.Err() != nil || nc != nil {
		return err
	}
	if ctx.Err() != nil {
		// Removed or moved by SetPeers, or its name given to a
		// configured peer.
		log.Info("connection to peer closed", zap.Error(context.Cause(ctx)))
		if wasUp {
			n.emit(Event{Kind: EventDown, Peer: s.name})
		}
		return err
	}
	if wasUp {
		log.Warn("peer down", zap.Error(err))
		n.emit(Event{Kind: EventDown, Peer: s.name})
	} else {
		log.Warn("peer session failed", zap.Error(err))
	}
	return err
}

var errBadIdentity = errors.New("peering: peer identity mismatch")

// closeStopped closes conn, a connection we dialled, once ctx (its
// session's) has ended: with CloseShutdown when the node closes, else
// with CloseRemoved.
func (n *Node) closeStopped(ctx context.Context, conn *quic.Conn) {
	if n.ctx.Err() != nil {
		conn.CloseWithError(CloseShutdown, "shutting down")
		return
	}
	conn.CloseWithError(CloseRemoved, context.Cause(ctx).Error())
}

func (n *Node) runSession(p *peer, s *sess, conn *quic.Conn, anyName bool) error {
	log := s.log
	ctx, cancel := context.WithTimeout(s.ctx, n.cfg.StreamTimeout)
	str, err := conn.OpenStreamSync(ctx)
	cancel()
	if err != nil {
		return fmt.Errorf("opening control stream: %w", err)
	}
	hl := n.hello()
	var resumes []Resume
	if name := p.nameNow(); name != "" && n.cfg.Resume != nil {
		resumes = n.cfg.Resume(name)
	}
	hl.Resume = len(resumes) > 0
	b, err := appendHello(nil, hl)
	if err != nil {
		return err
	}
	if hl.Resume {
		b = appendResume(b, resumes)
	}
	str.SetDeadline(time.Now().Add(n.cfg.StreamTimeout))
	if _, err := str.Write(b); err != nil {
		return fmt.Errorf("sending hello: %w", err)
	}
	buf := make([]byte, MaxFrameSize)
	t, payload, err := readFrame(str, buf)
	if err != nil {
		return fmt.Errorf("reading hello: %w", err)
	}
	if t != frameHello {
		return errUnexpected
	}
	h, err := decodeHello(payload)
	if err != nil {
		return err
	}
	fresh, err := n.admit(p, s, conn, h.Name, anyName)
	if err != nil {
		return err
	}
	log = s.log
	str.SetDeadline(time.Time{})

	// What we send the acceptor from now on (PURGE frames) goes through a
	// queue and a writer of its own: senders never wait on the stream.
	out := &outQueue{conn: conn, wake: make(chan struct{}, 1)}
	stop := make(chan struct{})
	defer close(stop)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := n.writeQueue(str, out, conn, stop); err != nil && conn.Context().Err() == nil && n.ctx.Err() == nil {
			log.Warn("writing control stream; closing the connection", zap.Error(err))
			conn.CloseWithError(CloseTooSlow, "control stream not read")
		}
	}()
	defer p.out.Store(nil)

	lan := h.Lan
	p.lan.Store(&lan)
	st := h.State
	p.st.Store(&st)
	p.ready.Store(h.Ready)
	p.seen()
	p.out.Store(out)
	p.conn.Store(conn)
	log.Info("peer up", zap.Bool("ready", h.Ready), zap.Bool("observer", h.Observer), zap.String("lan", h.Lan),
		zap.Uint64("epoch", h.State.Epoch), zap.Int("groups", len(h.State.Groups)))
	if fresh {
		log.Info("learned the name of a peer listed by address")
		n.emit(Event{Kind: EventNamed, Peer: s.name, Addr: p.addr})
	}
	n.emit(Event{Kind: EventUp, Peer: s.name, Ready: h.Ready, Lan: h.Lan, State: h.State.Clone()})

	var purges purgeReceiver
	sy := syncState{open: map[string]SyncMode{}, seq: map[string]uint64{}}
	inSnapshot := true
	for {
		t, payload, err := readFrame(str, buf)
		if err != nil {
			return err
		}
		p.seen()
		switch t {
		case frameReady:
			r, err := decodeReady(payload)
			if err != nil {
				return err
			}
			if r != p.ready.Swap(r) {
				n.emit(Event{Kind: EventReady, Peer: s.name, Ready: r})
			}
		case frameSync:
			sc, err := decodeSync(payload)
			if err != nil {
				return err
			}
			mode, open := sy.open[sc.Group]
			switch {
			case !sc.End && open, sc.End && !open && sc.Mode != SyncPending,
				sc.End && open && mode != sc.Mode:
				return fmt.Errorf("%w: SYNC of group %q out of order", errProtocol, sc.Group)
			case sc.End:
				delete(sy.open, sc.Group)
			case len(sy.open) >= maxGroups:
				return fmt.Errorf("%w: SYNC of too many groups at once", errProtocol)
			default:
				sy.open[sc.Group] = sc.Mode
			}
			delete(sy.seq, sc.Group)
			n.emit(Event{Kind: EventSync, Peer: s.name, Sync: sc})
		case frameSeq:
			group, seq, err := decodeSeq(payload)
			if err != nil {
				return err
			}
			if _, ok := sy.seq[group]; !ok && len(sy.seq) >= maxGroups {
				return fmt.Errorf("%w: SEQ frames for too many groups", errProtocol)
			}
			sy.seq[group] = seq
		case frameTOC:
			group, items, err := decodeItems(payload)
			if err != nil {
				return err
			}
			if !inSnapshot {
				return errUnexpected
			}
			mode, open := sy.open[group]
			if !open {
				// An older peer: no SYNC frames. Its snapshot begins here
				// and ends at TOC_END.
				if len(sy.open) >= maxGroups {
					return fmt.Errorf("%w: snapshot of too many groups", errProtocol)
				}
				sy.open[group], sy.legacy = SyncSnapshot, true
				n.emit(Event{Kind: EventSync, Peer: s.name, Sync: Sync{Group: group}})
			} else if mode != SyncSnapshot {
				return errUnexpected
			}
			if sy.items += len(items); sy.items > n.maxSnapshot {
				return fmt.Errorf("%w: snapshot of more than %d items", errProtocol, n.maxSnapshot)
			}
			n.emit(Event{Kind: EventTOC, Peer: s.name, Delta: Delta{Group: group, Upserts: items}})
		case frameTOCEnd:
			if !inSnapshot || len(payload) != 0 {
				return errUnexpected
			}
			if sy.legacy {
				for g := range sy.open {
					n.emit(Event{Kind: EventSync, Peer: s.name, Sync: Sync{Group: g, End: true}})
				}
				clear(sy.open)
			}
			if len(sy.open) > 0 {
				return fmt.Errorf("%w: TOC_END with a group's SYNC open", errProtocol)
			}
			inSnapshot = false
			n.emit(Event{Kind: EventSnapshot, Peer: s.name})
		case frameUpsert:
			group, items, err := decodeItems(payload)
			if err != nil {
				return err
			}
			mode, open := sy.open[group]
			if inSnapshot && !open {
				return errUnexpected
			}
			if open && mode == SyncSnapshot {
				// A group sent whole after the connect (Resync).
				n.emit(Event{Kind: EventTOC, Peer: s.name, Delta: Delta{Group: group, Upserts: items}})
				continue
			}
			n.emit(Event{Kind: EventDelta, Peer: s.name, Delta: Delta{Group: group, Upserts: items, Seq: sy.seq[group]}})
		case frameDelete:
			group, paths, err := decodeDeletes(payload)
			if err != nil {
				return err
			}
			mode, open := sy.open[group]
			if inSnapshot && !open || open && mode == SyncSnapshot {
				return errUnexpected
			}
			n.emit(Event{Kind: EventDelta, Peer: s.name, Delta: Delta{Group: group, Deletes: paths, Seq: sy.seq[group]}})
		case framePurge:
			pg, err := decodePurge(payload)
			if err != nil {
				return err
			}
			purges.receive(n, log, s.name, pg)
		case frameLan:
			lan, err := decodeLan(payload)
			if err != nil {
				return err
			}
			p.lan.Store(&lan)
			log.Info("peer's LAN address changed", zap.String("lan", lan))
		case frameState:
			st, err := decodeState(payload)
			if err != nil {
				return err
			}
			p.st.Store(&st)
			log.Debug("peer's state changed", zap.Uint64("epoch", st.Epoch), zap.Int("groups", len(st.Groups)))
			n.emit(Event{Kind: EventState, Peer: s.name, State: st.Clone()})
		case frameHeld: // push.go
			if err := n.receiveSpread(s.name, t, payload); err != nil {
				return err
			}
		default:
			// Unknown control frames are skipped: a newer peer may send
			// messages this version does not know.
		}
	}
}

// syncState is what a session tracks of the peer's table-of-content sync.
type syncState struct {
	open   map[string]SyncMode // groups begun and not ended
	seq    map[string]uint64   // the number of each group's change being received
	items  int                 // items of the snapshot at connect so far
	legacy bool                // the peer sends no SYNC frames
}

// bufPool holds small buffers for request and response frames.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// Fetch asks the peer named peerName for the item req names and returns its
// metadata and body. The body is freshly allocated and the caller's to keep.
//
// Fetch gives up at ctx's deadline or after Config.FetchTimeout, whichever
// comes first, and when ctx is cancelled; it then cancels the stream with
// ErrCodeCanceled. It fails at once with ErrPeerDown when the peer has no
// live connection, or that is not (or no longer: SetPeers) a configured
// peer. Errors from the peer are *Error values: test them with
// errors.Is(err, ErrNotFound) and the like.
func (n *Node) Fetch(ctx context.Context, peerName string, req Request) (Meta, []byte, error) {
	p := n.lookup(peerName)
	if p == nil {
		if n.ctx.Err() != nil {
			return Meta{}, nil, ErrClosed
		}
		return Meta{}, nil, fmt.Errorf("peering: %q is not a configured peer: %w", peerName, ErrPeerDown)
	}
	conn := p.conn.Load()
	if conn == nil {
		if n.ctx.Err() != nil {
			return Meta{}, nil, ErrClosed
		}
		return Meta{}, nil, ErrPeerDown
	}
	meta, body, err := n.fetch(ctx, conn, &req)
	if err != nil {
		return Meta{}, nil, fmt.Errorf("fetching %s %s from %s: %w", req.Group, req.Path, peerName, err)
	}
	p.seen()
	return meta, body, nil
}

func (n *Node) fetch(ctx context.Context, conn *quic.Conn, req *Request) (_ Meta, _ []byte, err error) {
	if err := ctx.Err(); err != nil {
		return Meta{}, nil, err
	}
	deadline := time.Now().Add(n.cfg.FetchTimeout)
	ctxDeadline := false
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) && ctx.Done() != nil {
		deadline, ctxDeadline = d, true
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	b, err := appendGet((*bp)[:0], req)
	if err != nil {
		return Meta{}, nil, err
	}

	str, err := conn.OpenStream()
	if err != nil {
		// Over the peer's stream limit: wait for a slot, within the deadline.
		octx, cancel := context.WithDeadline(ctx, deadline)
		str, err = conn.OpenStreamSync(octx)
		cancel()
		if err != nil {
			return Meta{}, nil, n.fetchError(ctx, ctxDeadline, err)
		}
	}
	// The deadline is enforced by resetting the stream, not with stream
	// deadlines (quic-go arms a timer for every Read that waits: hundreds
	// for a large body) nor with a timer per fetch (measured: 6-8% of the
	// CPU of a 1 KiB fetch under 32-way concurrency). ctx's own timer
	// covers its deadline; FetchTimeout, when it comes first, is watched
	// by the node's sweeper.
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() { abort(str, ErrCodeCanceled) })
		defer stop()
	}
	if !ctxDeadline {
		n.inflight.add(str, deadline)
	}
	defer func() {
		timedOut := !ctxDeadline && !n.inflight.remove(str)
		if err != nil {
			abort(str, ErrCodeCanceled)
			if timedOut {
				err = ErrTimeout
			}
			err = n.fetchError(ctx, ctxDeadline, err)
		}
	}()

	if err := writeFin(str, b); err != nil {
		return Meta{}, nil, err
	}
	t, payload, rest, eof, err := readHead(str, (*bp)[:cap(*bp)])
	if err != nil {
		return Meta{}, nil, err
	}
	if cap(payload) > cap(*bp) {
		*bp = payload[:0:cap(payload)] // keep the larger buffer
	}
	if t != frameResponse {
		return Meta{}, nil, ErrBadRequest
	}
	status, meta, err := decodeResponse(payload)
	if err != nil {
		return Meta{}, nil, ErrBadRequest
	}
	if status != ErrCodeNoError {
		return Meta{}, nil, codeError(status)
	}
	if req.Length > 0 && meta.Size > req.Length {
		return Meta{}, nil, ErrBadRequest // more than the range asked for
	}
	// The body buffer is sized from the announced size, so that size is
	// checked against the cap before anything is allocated: a peer cannot
	// make us allocate more than MaxBodySize, whatever it claims, and if
	// it sends less than it announced the fetch fails.
	if meta.Size > n.cfg.MaxBodySize {
		abort(str, ErrCodeTooLarge)
		return Meta{}, nil, &Error{ErrCodeTooLarge, fmt.Sprintf("response of %d bytes announced, over the limit of %d (MaxBodySize)", meta.Size, n.cfg.MaxBodySize)}
	}
	if int64(len(rest)) > meta.Size {
		return Meta{}, nil, errTrailingBytes
	}
	body := make([]byte, meta.Size)
	got := copy(body, rest)
	for got < len(body) {
		if eof {
			return Meta{}, nil, io.ErrUnexpectedEOF
		}
		k, err := str.Read(body[got:])
		got += k
		if err == io.EOF {
			eof = true
		} else if err != nil {
			return Meta{}, nil, err
		}
	}
	// The stream must end here; reading its end also frees its slot.
	if !eof {
		if err := readEOF(str); err != nil {
			return Meta{}, nil, err
		}
	}
	return meta, body, nil
}

// inflight holds the deadlines of fetches bounded by Config.FetchTimeout.
// The sweeper resets the streams of those that outlive it.
type inflight struct {
	mu sync.Mutex
	m  map[*quic.Stream]time.Time
}

func (f *inflight) add(str *quic.Stream, deadline time.Time) {
	f.mu.Lock()
	f.m[str] = deadline
	f.mu.Unlock()
}

// remove forgets str and reports whether it was still there (false: the
// sweeper timed it out).
func (f *inflight) remove(str *quic.Stream) bool {
	f.mu.Lock()
	_, ok := f.m[str]
	delete(f.m, str)
	f.mu.Unlock()
	return ok
}

// sweepLoop resets fetches past their deadline, checking every
// FetchTimeout/16 (between 5ms and 250ms): a fetch times out at most that
// much late.
func (n *Node) sweepLoop() {
	defer n.wg.Done()
	every := min(max(n.cfg.FetchTimeout/16, 5*time.Millisecond), 250*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	var expired []*quic.Stream
	for {
		select {
		case <-n.ctx.Done():
			return
		case now := <-t.C:
			n.inflight.mu.Lock()
			for str, d := range n.inflight.m {
				if now.After(d) {
					delete(n.inflight.m, str)
					expired = append(expired, str)
				}
			}
			n.inflight.mu.Unlock()
			for i, str := range expired {
				abort(str, ErrCodeCanceled)
				expired[i] = nil
			}
			expired = expired[:0]
		}
	}
}

// fetchError turns an error from a stream into what Fetch reports. A
// timeout is ErrTimeout, and also context.DeadlineExceeded when the deadline
// was ctx's.
func (n *Node) fetchError(ctx context.Context, ctxDeadline bool, err error) error {
	var pe *Error
	if errors.As(err, &pe) {
		return err
	}
	if cerr := ctx.Err(); cerr != nil {
		if ctxDeadline && errors.Is(cerr, context.DeadlineExceeded) {
			return fmt.Errorf("%w (%w)", ErrTimeout, cerr)
		}
		return cerr
	}
	var se *quic.StreamError
	if errors.As(err, &se) {
		if se.Remote {
			return codeError(se.ErrorCode)
		}
		if se.ErrorCode == ErrCodeCanceled && ctx.Err() != nil {
			return ctx.Err()
		}
		return codeError(se.ErrorCode)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
		if ctxDeadline {
			return fmt.Errorf("%w (%w)", ErrTimeout, context.DeadlineExceeded)
		}
		return ErrTimeout
	}
	var ae *quic.ApplicationError
	var ie *quic.IdleTimeoutError
	if errors.As(err, &ae) || errors.As(err, &ie) {
		return fmt.Errorf("%w: %v", ErrPeerDown, err)
	}
	if n.ctx.Err() != nil {
		return ErrClosed
	}
	return err
}

// abort resets both directions of str with code.
func abort(str *quic.Stream, code quic.StreamErrorCode) {
	str.CancelRead(code)
	str.CancelWrite(code)
}

// FetchMeta asks the peer named peerName for the current metadata of the
// item at req.Group and req.Path, with its variants (a META request; the
// other fields of req are not sent but req.Epoch). It gives up as Fetch
// does. A peer that predates META answers ErrBadRequest.
func (n *Node) FetchMeta(ctx context.Context, peerName string, req Request) (Meta, error) {
	p := n.lookup(peerName)
	if p == nil {
		return Meta{}, ErrPeerDown
	}
	conn := p.conn.Load()
	if conn == nil {
		return Meta{}, ErrPeerDown
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.FetchTimeout)
	defer cancel()
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	b, err := appendMetaGet((*bp)[:0], &req)
	if err != nil {
		return Meta{}, err
	}
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return Meta{}, n.fetchError(ctx, true, err)
	}
	stop := context.AfterFunc(ctx, func() { abort(str, ErrCodeCanceled) })
	defer stop()
	meta, err := func() (Meta, error) {
		if err := writeFin(str, b); err != nil {
			return Meta{}, err
		}
		t, payload, rest, eof, err := readHead(str, (*bp)[:cap(*bp)])
		if err != nil {
			return Meta{}, err
		}
		if t != frameResponse || len(rest) != 0 {
			return Meta{}, ErrBadRequest
		}
		status, meta, err := decodeMetaResponse(payload)
		if err != nil {
			return Meta{}, ErrBadRequest
		}
		if status != ErrCodeNoError {
			return Meta{}, codeError(status)
		}
		if !eof {
			if err := readEOF(str); err != nil {
				return Meta{}, err
			}
		}
		return meta, nil
	}()
	if err != nil {
		abort(str, ErrCodeCanceled)
		return Meta{}, fmt.Errorf("metadata of %s %s from %s: %w", req.Group, req.Path, peerName, n.fetchError(ctx, true, err))
	}
	p.seen()
	return meta, nil
}

// stallLoop closes every connection of the node once the process has not
// been scheduled for longer than the idle timeout (stopped with SIGSTOP, a
// paused VM, a starved machine). By then each peer has found this node
// silent and dropped its end, without a word (an idle timeout sends
// nothing), while on this side quic-go measured round trips across the
// stall (acknowledgements read seconds late) and stretched its own idle
// timeout to three of its inflated PTOs, tens of seconds: a connection that
// nobody answers any more stayed up, and every fetch on it timed out
// (bench/scale.sh, a node stopped for 10 s: its fetches from one peer timed
// out for over 40 s after it continued). Closed at once, they are dialled
// again, and the tables of content resume from their change numbers.
func (n *Node) stallLoop() {
	defer n.wg.Done()
	every := n.stallLimit() / 4
	t := time.NewTicker(every)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-n.ctx.Done():
			return
		case now := <-t.C:
			n.checkStall(now.Sub(last) - every)
			last = now
		}
	}
}

// stallLimit is the longest the process may go unscheduled before
// stallLoop closes its connections: the idle timeout, and at least a
// second, so that a goroutine merely scheduled late on a busy machine (the
// race detector, short idle timeouts in tests) is not taken for a stall.
func (n *Node) stallLimit() time.Duration { return max(n.cfg.IdleTimeout, time.Second) }

// checkStall closes every connection if the process was not scheduled for
// longer than stallLimit (late: how much later than due the last tick
// came).
func (n *Node) checkStall(late time.Duration) {
	if late <= n.stallLimit() {
		return
	}
	var conns []*quic.Conn
	if t := n.peers.Load(); t != nil {
		for _, p := range t.order {
			if c := p.conn.Load(); c != nil {
				conns = append(conns, c)
			}
		}
	}
	n.mu.Lock()
	for c := range n.inbound {
		conns = append(conns, c)
	}
	n.mu.Unlock()
	n.stalls.Add(1)
	n.log.Warn("this node was not scheduled for longer than its peers' idle timeout (stopped, paused or starved): they took it for down; closing its connections to dial them again",
		zap.Duration("stalled", late.Round(time.Millisecond)), zap.Duration("idle_timeout", n.cfg.IdleTimeout),
		zap.Int("connections", len(conns)))
	for _, c := range conns {
		c.CloseWithError(CloseGone, "this node stalled")
	}
}
