package peering

import (
	"bytes"
	"context"
	"errors"
	"io"
	weakrand "math/rand/v2"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"go.uber.org/zap"
)

// smallBody is the size up to which a response's header frame and body are
// copied into one buffer and queued at once, with the FIN (see writeFin).
const smallBody = 4 * finTail

// maxConnsPerName bounds the connections accepted at once from holders of
// certificates whose first name is the same. A node dials each peer once;
// one that restarts may briefly have a second connection while the first
// is not yet found dead (at most IdleTimeout), and SetPeers may briefly
// add a third. Past the bound a connection is closed with
// CloseTooManyConns: without it, one certificate could open connections
// without end, each with its goroutines, its 256 stream slots and its
// control stream's queue (maxSubscriberQueue).
const maxConnsPerName = 4

// inConn is a connection a peer dialled to us.
type inConn struct {
	conn  *quic.Conn
	from  string   // the first name of the peer's certificate
	names []string // every name of its certificate
	log   *zap.Logger
	// helloRefused is set once a HELLO on a later stream was refused
	// (and logged).
	helloRefused atomic.Bool
}

// certNames returns the DNS names of the certificate conn's peer presented.
func certNames(conn *quic.Conn) []string {
	if certs := conn.ConnectionState().TLS.PeerCertificates; len(certs) > 0 {
		return certs[0].DNSNames
	}
	return nil
}

// acceptLoop accepts peer connections: any holder of a leaf from the
// cluster CA (the TLS handshake refuses everyone else), at most
// maxConnsPerName at once per certificate name.
func (n *Node) acceptLoop() {
	defer n.wg.Done()
	for {
		conn, err := n.ln.Accept(n.ctx)
		if err != nil {
			if n.ctx.Err() == nil && !errors.Is(err, quic.ErrServerClosed) {
				n.log.Error("accepting peer connection", zap.Error(err))
			}
			return
		}
		n.handshakeDone(conn)
		ic := &inConn{conn: conn, names: certNames(conn)}
		if len(ic.names) > 0 {
			ic.from = ic.names[0]
		}
		ic.log = n.log.With(zap.String("peer", ic.from), zap.Stringer("peer_addr", conn.RemoteAddr()))
		n.mu.Lock()
		if n.closed {
			n.mu.Unlock()
			conn.CloseWithError(CloseShutdown, "shutting down")
			return
		}
		if c := n.perName[ic.from]; c >= maxConnsPerName {
			n.mu.Unlock()
			ic.log.Warn("too many connections from one peer name; closing the new one", zap.Int("connections", c), zap.Int("limit", maxConnsPerName))
			conn.CloseWithError(CloseTooManyConns, "too many connections")
			continue
		}
		n.perName[ic.from]++
		n.inbound[conn] = struct{}{}
		n.wg.Add(1)
		n.mu.Unlock()
		go n.serveConn(ic)
	}
}

// serveConn accepts the streams of one peer connection, each served by its
// own goroutine.
func (n *Node) serveConn(ic *inConn) {
	defer n.wg.Done()
	defer func() {
		n.mu.Lock()
		delete(n.inbound, ic.conn)
		if n.perName[ic.from]--; n.perName[ic.from] <= 0 {
			delete(n.perName, ic.from)
		}
		n.mu.Unlock()
	}()
	for {
		str, err := ic.conn.AcceptStream(n.ctx)
		if err != nil {
			return
		}
		n.wg.Add(1)
		go n.serveStream(ic, str)
	}
}

// serveStream reads a stream's first frame under the stream deadline and
// serves it: a GET (one fetch) or a HELLO (the control stream; only on
// the connection's first stream).
func (n *Node) serveStream(ic *inConn, str *quic.Stream) {
	conn, from, names := ic.conn, ic.from, ic.names
	defer n.wg.Done()
	str.SetDeadline(time.Now().Add(n.cfg.StreamTimeout))
	bp := bufPool.Get().(*[]byte)
	t, payload, rest, eof, err := readHead(str, (*bp)[:cap(*bp)])
	if err != nil {
		bufPool.Put(bp)
		abort(str, streamCode(err))
		return
	}
	switch t {
	case frameGet, frameMeta:
		// The request is one frame: the client's side ends here. Reading
		// the end also completes our receive side, which frees the
		// stream slot.
		if len(rest) == 0 && !eof {
			err = readEOF(str)
		} else if len(rest) != 0 {
			err = errTrailingBytes
		}
		if err != nil {
			bufPool.Put(bp)
			abort(str, streamCode(err))
			return
		}
		if t == frameGet {
			n.serveGet(str, payload, from, bp)
		} else {
			n.serveMeta(str, payload, from, bp)
		}
		bufPool.Put(bp)
	case frameHello:
		if str.StreamID() != 0 {
			// One control stream per connection, the first stream the
			// dialer opens: each is a subscriber with its own queue of
			// up to maxSubscriberQueue bytes.
			bufPool.Put(bp)
			abort(str, ErrCodeBadRequest)
			if !ic.helloRefused.Swap(true) {
				ic.log.Warn("peer sent a HELLO on a stream other than its first; refused", zap.Int64("stream", int64(str.StreamID())))
			}
			return
		}
		h, err := decodeHello(payload)
		// Frames the dialer sent after its HELLO are kept for the
		// control stream's reader.
		rest = bytes.Clone(rest)
		bufPool.Put(bp)
		if err != nil {
			ic.log.Warn("peer sent a malformed HELLO; closing the connection", zap.Error(err))
			// The connection's close ends the stream too: resetting the
			// stream first would let the peer see that instead of why.
			conn.CloseWithError(CloseProtocolError, err.Error())
			return
		}
		n.serveControl(conn, str, h, names, rest)
	default:
		bufPool.Put(bp)
		abort(str, ErrCodeBadRequest)
	}
}

// streamCode is the reset code for a failed read or write.
func streamCode(err error) quic.StreamErrorCode {
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) && ne.Timeout() {
		return ErrCodeTimeout
	}
	return ErrCodeBadRequest
}

// serveGet answers one fetch from the backend.
func (n *Node) serveGet(str *quic.Stream, payload []byte, from string, bp *[]byte) {
	req, err := decodeGet(payload)
	if err != nil {
		abort(str, ErrCodeBadRequest)
		return
	}
	req.Peer = from
	meta, body, err := n.backend.Get(str.Context(), req)
	status := ErrCodeNoError
	if err != nil {
		status = errorCode(err)
		if status == ErrCodeInternal {
			n.log.Error("serving peer fetch", zap.String("peer", from), zap.String("group", req.Group),
				zap.String("path", req.Path), zap.Error(err))
		}
	}
	meta.Size = int64(len(body))
	b, err := appendResponse((*bp)[:0], status, &meta)
	if err != nil { // a field over its limit: the item cannot be described
		n.log.Error("encoding peer response", zap.String("path", req.Path), zap.Error(err))
		b, _ = appendResponse((*bp)[:0], ErrCodeInternal, nil)
		status = ErrCodeInternal
	}
	if status == ErrCodeNoError && len(b)+len(body) <= smallBody {
		b = append(b, body...)
		body = nil
	}
	if cap(b) <= 64<<10 {
		*bp = b[:0] // keep a grown buffer, within reason
	}
	if len(body) > 0 {
		// Queue the header without waiting, so that it shares a packet
		// with the start of the body.
		if err := str.TryWriteAll(b); err != nil {
			if !errors.Is(err, quic.ErrWouldBlock) {
				abort(str, streamCode(err))
				return
			}
			if _, err := str.Write(b); err != nil {
				abort(str, streamCode(err))
				return
			}
		}
		b = body
	}
	if err := writeFin(str, b); err != nil {
		abort(str, streamCode(err))
	}
}

// serveMeta answers one META request from the backend: the item's
// metadata with its variants, no body.
func (n *Node) serveMeta(str *quic.Stream, payload []byte, from string, bp *[]byte) {
	req, err := decodeMetaGet(payload)
	if err != nil {
		abort(str, ErrCodeBadRequest)
		return
	}
	req.Peer = from
	meta, _, err := n.backend.Get(str.Context(), req)
	status := ErrCodeNoError
	if err != nil {
		status = errorCode(err)
	}
	meta.Encoding = ""
	b, err := appendMetaResponse((*bp)[:0], status, &meta)
	if err != nil {
		b, _ = appendMetaResponse((*bp)[:0], ErrCodeInternal, nil)
	}
	if cap(b) <= 64<<10 {
		*bp = b[:0]
	}
	if err := writeFin(str, b); err != nil {
		abort(str, streamCode(err))
	}
}

// subscriber is a peer that receives our table of content on its control
// stream: every node that dialled us.
type subscriber struct {
	name string
	outQueue
}

// queued is one entry of an outQueue: encoded frames, or a group to send
// whole (Node.Resync).
type queued struct {
	frames []byte // shared between queues: read-only
	resync *logPos
}

// logPos is a position in a group's change log.
type logPos struct {
	group string
	log   uint64
	seq   uint64
}

// changeLog is the latest numbered changes of one group this node
// published, kept for peers that reconnect (see Resume).
type changeLog struct {
	id      uint64
	seq     uint64 // the last change's number
	entries []logEntry
	bytes   int
}

type logEntry struct {
	seq    uint64
	frames []byte
}

// newLogID returns a random change log id (never 0).
func newLogID() uint64 {
	for {
		if id := weakrand.Uint64(); id != 0 {
			return id
		}
	}
}

// add records the frames of change seq, dropping the oldest changes past
// the bounds.
func (l *changeLog) add(seq uint64, frames []byte) {
	l.entries = append(l.entries, logEntry{seq, frames})
	l.bytes += len(frames)
	drop := 0
	for drop < len(l.entries)-1 && (l.bytes > maxLogBytes || len(l.entries)-drop > maxLogChanges) {
		l.bytes -= len(l.entries[drop].frames)
		drop++
	}
	if drop > 0 {
		l.entries = append(l.entries[:0:0], l.entries[drop:]...)
	}
}

// since returns the frames of the changes after seq, and whether the log
// holds them all.
func (l *changeLog) since(seq uint64) ([][]byte, bool) {
	if seq > l.seq {
		return nil, false
	}
	if seq == l.seq {
		return nil, true
	}
	if len(l.entries) == 0 || l.entries[0].seq > seq+1 {
		return nil, false
	}
	i := sort.Search(len(l.entries), func(i int) bool { return l.entries[i].seq > seq })
	out := make([][]byte, 0, len(l.entries)-i)
	for _, e := range l.entries[i:] {
		out = append(out, e.frames)
	}
	return out, true
}

// logLocked returns group's change log, making it on first use. Called
// with n.mu held.
func (n *Node) logLocked(group string) *changeLog {
	l := n.logs[group]
	if l == nil {
		l = &changeLog{id: newLogID()}
		n.logs[group] = l
	}
	return l
}

// Resync starts a new change log for group and sends the group whole to
// every connected peer, in order with the rest of what they are sent:
// call it when peers may hold an incomplete table of the group (it was
// being primed, or its store was replaced, while changes went
// unpublished). Peers that connect later get it at connect. Peers that
// reconnect with a position in the old log get the group whole.
func (n *Node) Resync(group string) {
	if checkLen(group, maxFieldLen) != nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	l := &changeLog{id: newLogID()}
	n.logs[group] = l
	for s := range n.subs {
		s.enqueueResync(&logPos{group: group, log: l.id})
	}
}

// ResetLog starts a new change log for group without sending anything:
// peers that reconnect get the group whole (its store was replaced).
func (n *Node) ResetLog(group string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.logs[group] = &changeLog{id: newLogID()}
}

// LogPos reports group's change log id and the number of its last change
// (0, 0 if none): for tests and measurements.
func (n *Node) LogPos(group string) (log, seq uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if l := n.logs[group]; l != nil {
		return l.id, l.seq
	}
	return 0, 0
}

// TOCWriter streams a table of content to one peer: the backend calls
// Group, then Item for each item, per group; it encodes the items into
// frames of at most MaxFrameSize and writes them about tocBatch bytes at a
// time. Not safe for concurrent use.
type TOCWriter struct {
	n     *Node
	write func([]byte) error
	// only, if set, is the one group wanted (Resync), as of pos.
	only *logPos
	// pos holds each group's log position at subscription; resumed the
	// changes to send instead of a snapshot, by group.
	pos     map[string]logPos
	resumed map[string]resumeFrom
	sent    map[string]bool

	buf     []byte
	group   string // the group open, "" if none
	seq     uint64 // its position (for the SYNC that ends it)
	frame   int    // start of the items frame being filled, -1 if none
	count   int    // items in it
	items   int    // items written in all
	skipped int
	bytes   int64
}

type resumeFrom struct {
	seq    uint64
	frames [][]byte
}

// NewTOCWriter returns a writer that encodes a table of content as a
// node sends it at connect, to write, outside any connection: for tools
// and measurements. Call Finish after the last item.
func NewTOCWriter(write func([]byte) error) *TOCWriter {
	return &TOCWriter{write: write, pos: map[string]logPos{}, sent: map[string]bool{}, frame: -1}
}

// Finish ends the last group and writes what is buffered, then TOC_END.
func (w *TOCWriter) Finish() error {
	if err := w.finish(); err != nil {
		return err
	}
	b := appendTOCEnd(nil)
	w.bytes += int64(len(b))
	return w.write(b)
}

// Only returns the one group the writer wants ("" for every group).
func (w *TOCWriter) Only() string {
	if w.only == nil {
		return ""
	}
	return w.only.group
}

// Bytes returns how many bytes the writer has written so far.
func (w *TOCWriter) Bytes() int64 { return w.bytes }

// Group begins the table of content of group name, which lists about items
// items (a hint for the receiver). ready false: the group is not published
// yet (being primed): the peer gets it whole later (Resync). Group reports
// whether the group's items are wanted: false for a group that is not
// ready, not the one group wanted, or for which the peer gets the changes
// since its last connection instead.
func (w *TOCWriter) Group(name string, items int, ready bool) (bool, error) {
	if err := w.endGroup(); err != nil {
		return false, err
	}
	if checkLen(name, maxFieldLen) != nil || w.sent[name] {
		return false, nil
	}
	if w.only != nil && name != w.only.group {
		return false, nil
	}
	w.sent[name] = true
	pos := w.position(name)
	s := Sync{Group: name, Log: pos.log, Seq: pos.seq, Items: uint64(max(items, 0))}
	if !ready {
		s.Mode, s.End = SyncPending, true
		return false, w.appendSync(&s)
	}
	if r, ok := w.resumed[name]; ok && w.only == nil {
		s.Mode, s.Seq, s.Items = SyncResume, r.seq, 0
		if err := w.appendSync(&s); err != nil {
			return false, err
		}
		for _, f := range r.frames {
			w.buf = append(w.buf, f...)
			if err := w.flush(false); err != nil {
				return false, err
			}
		}
		end := Sync{Group: name, Mode: SyncResume, End: true, Log: pos.log, Seq: pos.seq}
		return false, w.appendSync(&end)
	}
	if err := w.appendSync(&s); err != nil {
		return false, err
	}
	w.group, w.seq = name, pos.seq
	return true, nil
}

// position returns the log position group's snapshot is as of.
func (w *TOCWriter) position(group string) logPos {
	if w.only != nil {
		return *w.only
	}
	if p, ok := w.pos[group]; ok {
		return p
	}
	if w.n == nil {
		return logPos{group: group}
	}
	// No log at subscription: every change since is queued for the peer.
	w.n.mu.Lock()
	l := w.n.logLocked(group)
	w.n.mu.Unlock()
	return logPos{group: group, log: l.id}
}

// Item appends one item of the group begun last. An item that cannot be
// encoded (a field over its limit) is skipped and counted.
func (w *TOCWriter) Item(m *Meta) error {
	if w.group == "" {
		return nil
	}
	t := frameTOC
	if w.only != nil {
		t = frameUpsert // after the connect sync: what an older peer takes
	}
	if w.frame < 0 {
		w.buf, w.frame = beginFrame(w.buf, t)
		w.buf = appendStr(w.buf, w.group)
		w.count = 0
	}
	mark := len(w.buf)
	nb, err := appendMeta(w.buf, m, true)
	if err != nil {
		w.buf = nb[:mark]
		w.skipped++
		return nil
	}
	w.buf = nb
	if len(w.buf)-w.frame-frameHeaderSize > MaxFrameSize {
		if w.count == 0 {
			w.buf = w.buf[:mark]
			w.skipped++
			return nil
		}
		item := append([]byte(nil), w.buf[mark:]...)
		w.buf, _ = endFrame(w.buf[:mark], w.frame)
		w.frame = -1
		if err := w.flush(false); err != nil {
			return err
		}
		w.buf, w.frame = beginFrame(w.buf, t)
		w.buf = appendStr(w.buf, w.group)
		w.buf = append(w.buf, item...)
		w.count = 1
	} else {
		w.count++
	}
	w.items++
	return nil
}

// endGroup closes the items frame and the group begun last.
func (w *TOCWriter) endGroup() error {
	if w.frame >= 0 {
		w.buf, _ = endFrame(w.buf, w.frame)
		w.frame = -1
	}
	if w.group == "" {
		return nil
	}
	pos := w.position(w.group)
	s := Sync{Group: w.group, End: true, Log: pos.log, Seq: w.seq}
	w.group = ""
	return w.appendSync(&s)
}

func (w *TOCWriter) appendSync(s *Sync) error {
	var err error
	if w.buf, err = appendSync(w.buf, s); err != nil {
		return err
	}
	return w.flush(false)
}

// flush writes the buffer once it holds tocBatch bytes (or whatever it
// holds, with all), never a frame being filled.
func (w *TOCWriter) flush(all bool) error {
	if w.frame >= 0 || len(w.buf) == 0 || !all && len(w.buf) < tocBatch {
		return nil
	}
	if err := w.write(w.buf); err != nil {
		return err
	}
	w.bytes += int64(len(w.buf))
	w.buf = w.buf[:0]
	return nil
}

// finish ends the group begun last and writes what is buffered.
func (w *TOCWriter) finish() error {
	if err := w.endGroup(); err != nil {
		return err
	}
	if w.skipped > 0 && w.n != nil {
		w.n.log.Warn("items left out of the table of content (a field over its limit)", zap.Int("items", w.skipped))
	}
	return w.flush(true)
}

// outQueue holds the control frames waiting for one control stream's
// writer: a subscriber's (everything we publish), or that of a connection
// we dialled (our purges).
type outQueue struct {
	conn *quic.Conn

	mu     sync.Mutex
	queue  []queued
	queued int
	wake   chan struct{}
	dead   bool
}

// enqueue adds frames for the queue's writer. A peer that lets more than
// maxSubscriberQueue bytes pile up is disconnected.
func (s *outQueue) enqueue(frames []byte) {
	s.mu.Lock()
	if s.dead {
		s.mu.Unlock()
		return
	}
	if s.queued+len(frames) > maxSubscriberQueue {
		s.dead = true
		s.queue, s.queued = nil, 0
		s.mu.Unlock()
		go s.conn.CloseWithError(CloseTooSlow, "control stream not read")
		return
	}
	s.queue = append(s.queue, queued{frames: frames})
	s.queued += len(frames)
	s.mu.Unlock()
	s.poke()
}

// enqueueResync queues a group to send whole, after what is queued.
func (s *outQueue) enqueueResync(pos *logPos) {
	s.mu.Lock()
	if s.dead {
		s.mu.Unlock()
		return
	}
	s.queue = append(s.queue, queued{resync: pos})
	s.mu.Unlock()
	s.poke()
}

func (s *outQueue) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *outQueue) take() []queued {
	s.mu.Lock()
	q := s.queue
	s.queue, s.queued = nil, 0
	s.mu.Unlock()
	return q
}

// serveControl answers a dialer's HELLO and then sends it our table of
// content (snapshot, then deltas and ready changes) until the connection
// ends.
func (n *Node) serveControl(conn *quic.Conn, str *quic.Stream, h hello, names []string, rest []byte) {
	log := n.log.With(zap.String("peer", h.Name), zap.Stringer("peer_addr", conn.RemoteAddr()))
	if !slices.Contains(names, h.Name) {
		log.Warn("peer's hello names a node its certificate does not", zap.Strings("cert_names", names))
		conn.CloseWithError(CloseBadIdentity, "hello name not in certificate")
		return
	}
	// A dialer that holds our tables sends what it holds right after its
	// HELLO.
	r := io.MultiReader(bytes.NewReader(rest), str)
	var resumes []Resume
	if h.Resume {
		buf := make([]byte, 1024)
		t, payload, err := readFrame(r, buf)
		if err == nil && t != frameResume {
			err = errUnexpected
		}
		if err == nil {
			resumes, err = decodeResume(payload)
		}
		if err != nil {
			log.Warn("peer's resume frame unreadable; closing the connection", zap.Error(err))
			if errors.Is(err, errProtocol) {
				conn.CloseWithError(CloseProtocolError, err.Error())
			} else {
				abort(str, streamCode(err))
			}
			return
		}
	}
	sub := &subscriber{name: h.Name, outQueue: outQueue{conn: conn, wake: make(chan struct{}, 1)}}
	w := &TOCWriter{n: n, pos: map[string]logPos{}, resumed: map[string]resumeFrom{}, sent: map[string]bool{}, frame: -1}
	// Subscribe before taking the snapshot, and note where each change log
	// is: a change published meanwhile is queued, and applied after the
	// snapshot (which may already show it: harmless).
	n.mu.Lock()
	n.subs[sub] = struct{}{}
	for g, l := range n.logs {
		w.pos[g] = logPos{group: g, log: l.id, seq: l.seq}
	}
	for _, rs := range resumes {
		if l := n.logs[rs.Group]; l != nil && l.id == rs.Log {
			if frames, ok := l.since(rs.Seq); ok {
				w.resumed[rs.Group] = resumeFrom{seq: rs.Seq, frames: frames}
			}
		}
	}
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.subs, sub)
		n.mu.Unlock()
	}()
	known := n.lookup(h.Name) != nil
	log.Info("peer subscribed", zap.Bool("ready", h.Ready), zap.Bool("observer", h.Observer), zap.Bool("configured", known))

	// The dialer sends PURGE frames; anything else it sends is read and
	// ignored (forward compatibility). The end or failure of its side ends
	// the subscription; a malformed frame closes the connection.
	str.SetReadDeadline(time.Time{})
	readerDone := make(chan struct{})
	var readErr error
	go func() {
		defer close(readerDone)
		readErr = n.readControl(r, h.Name, log)
		if errors.Is(readErr, errProtocol) {
			log.Warn("peer broke the protocol on its control stream", zap.Error(readErr))
			conn.CloseWithError(CloseProtocolError, readErr.Error())
		}
	}()

	write := func(b []byte) error {
		str.SetWriteDeadline(time.Now().Add(n.cfg.StreamTimeout))
		_, err := str.Write(b)
		return err
	}
	b, err := appendHello(nil, n.hello())
	if err == nil {
		err = write(b)
	}
	if err == nil {
		w.write = write
		err = n.writeSnapshot(w)
		if err == nil && len(resumes) > 0 {
			log.Info("peer resumed the table of content", zap.Int("groups_resumed", len(w.resumed)),
				zap.Int("groups", len(w.sent)), zap.Int64("bytes", w.bytes))
		}
	}
	if err == nil {
		err = n.writeQueue(str, &sub.outQueue, conn, readerDone)
	}
	abort(str, ErrCodeCanceled)
	<-readerDone
	if err == nil {
		err = context.Cause(conn.Context())
	}
	if err == nil {
		err = readErr
	}
	if n.ctx.Err() == nil {
		log.Info("peer unsubscribed", zap.Error(err))
	}
}

// readControl reads what a dialer sends on its control stream after its
// HELLO, until the stream ends: PURGE frames become events from peer, other
// frames are skipped.
func (n *Node) readControl(r io.Reader, peer string, log *zap.Logger) error {
	buf := make([]byte, 1024)
	var pr purgeReceiver
	for {
		t, payload, err := readFrame(r, buf)
		if err != nil {
			return err
		}
		if t == framePurge {
			pg, err := decodePurge(payload)
			if err != nil {
				return err
			}
			pr.receive(n, log, peer, pg)
		}
		if t == frameSpread { // push.go
			if err := n.receiveSpread(peer, t, payload); err != nil {
				return err
			}
		}
	}
}

// purgeReceiver passes the purges that arrive on one control stream on as
// events, except those of the whole of a group (an empty prefix): each
// node would drop and re-read its whole share of the group, which no
// single purge from a peer may cause (an operator restarts or reloads the
// nodes instead). Node.Purge refuses to send one; one from a peer is
// dropped, logged at WARN the first time on the stream and at DEBUG after.
type purgeReceiver struct{ refused int }

func (pr *purgeReceiver) receive(n *Node, log *zap.Logger, peer string, pg Purge) {
	if pg.Prefix && pg.Path == "" {
		pr.refused++
		lvl := zap.DebugLevel
		if pr.refused == 1 {
			lvl = zap.WarnLevel
		}
		if ce := log.Check(lvl, "peer asked to purge a whole group (empty prefix); ignored"); ce != nil {
			ce.Write(zap.String("group", pg.Group), zap.Int("refused", pr.refused))
		}
		return
	}
	n.emit(Event{Kind: EventPurge, Peer: peer, Purge: pg})
}

// writeQueue writes q's frames to str as they are queued, until stop is
// closed or the connection or the node ends (then it returns nil), or a
// write fails (its error).
func (n *Node) writeQueue(str *quic.Stream, q *outQueue, conn *quic.Conn, stop <-chan struct{}) error {
	for {
		select {
		case <-q.wake:
			for _, e := range q.take() {
				if e.resync != nil {
					if err := n.writeResync(str, e.resync); err != nil {
						return err
					}
					continue
				}
				str.SetWriteDeadline(time.Now().Add(n.cfg.StreamTimeout))
				if _, err := str.Write(e.frames); err != nil {
					return err
				}
			}
		case <-stop:
			return nil
		case <-conn.Context().Done():
			return nil
		case <-n.ctx.Done():
			return nil
		}
	}
}

// hello is this node's HELLO, sent by both sides of a control stream.
func (n *Node) hello() *hello {
	return &hello{Name: n.cfg.Name, Ready: n.backend.Ready(), Observer: n.cfg.Observer, Lan: *n.lan.Load(), State: *n.state.Load()}
}

// writeSnapshot sends the backend's table of content through w, group by
// group (snapshots, resumed changes or pending groups), then TOC_END.
func (n *Node) writeSnapshot(w *TOCWriter) error {
	if err := n.backend.TOC(w); err != nil {
		return err
	}
	if err := w.finish(); err != nil {
		return err
	}
	b := appendTOCEnd(nil)
	w.bytes += int64(len(b))
	n.tocSent.Add(w.bytes)
	return w.write(b)
}

// DeltaBytes returns how many bytes of changes this node has published
// (each sent to every peer connected).
func (n *Node) DeltaBytes() int64 { return n.deltaSent.Load() }

// TOCBytesSent returns how many bytes of tables of content this node has
// sent at connects and in Resyncs (not the changes published since): what
// syncing its peers cost.
func (n *Node) TOCBytesSent() int64 { return n.tocSent.Load() }

// writeResync sends group pos.group whole to a subscriber, as of pos.
func (n *Node) writeResync(str *quic.Stream, pos *logPos) error {
	w := &TOCWriter{n: n, only: pos, sent: map[string]bool{}, frame: -1, write: func(b []byte) error {
		str.SetWriteDeadline(time.Now().Add(n.cfg.StreamTimeout))
		_, err := str.Write(b)
		return err
	}}
	if err := n.backend.TOC(w); err != nil {
		return err
	}
	if !w.sent[pos.group] {
		// The backend no longer has the group: say it is empty.
		if _, err := w.Group(pos.group, 0, true); err != nil {
			return err
		}
	}
	err := w.finish()
	n.tocSent.Add(w.bytes)
	return err
}

// Publish sends a change of this node's table of content to every peer
// connected to it, numbered in the group's change log (kept for peers that
// reconnect). Call it after the change is visible to Backend.TOC. Items
// that cannot be encoded (a field over its limit) are left out and
// logged.
func (n *Node) Publish(d Delta) {
	var b []byte
	var skipped int
	if checkLen(d.Group, maxFieldLen) != nil {
		n.log.Error("encoding delta: group name too long", zap.Int("len", len(d.Group)))
		return
	}
	if len(d.Upserts) > 0 {
		var err error
		if b, skipped, err = appendItems(b, frameUpsert, d.Group, d.Upserts); err != nil {
			n.log.Error("encoding delta", zap.String("group", d.Group), zap.Error(err))
			return
		}
	}
	if len(d.Deletes) > 0 {
		var s int
		var err error
		if b, s, err = appendDeletes(b, d.Group, d.Deletes); err != nil {
			n.log.Error("encoding delta", zap.String("group", d.Group), zap.Error(err))
			return
		}
		skipped += s
	}
	if skipped > 0 {
		n.log.Warn("items left out of a delta (a field over its limit)", zap.Int("items", skipped))
	}
	if len(b) == 0 {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	l := n.logLocked(d.Group)
	l.seq++
	frames, _ := appendSeq(make([]byte, 0, len(b)+len(d.Group)+16), d.Group, l.seq) // group checked above
	frames = append(frames, b...)
	l.add(l.seq, frames)
	n.deltaSent.Add(int64(len(frames)))
	for s := range n.subs {
		s.enqueue(frames)
	}
}

// PublishReady tells every connected peer this node's ready state.
func (n *Node) PublishReady(ready bool) {
	n.broadcast(appendReady(nil, ready))
}

// Purge asks every node this one is connected to, content nodes and
// observers alike, to drop the content p names: each receives it once, as
// an EventPurge whose Peer is this node (this node gets none). An observer
// reaches the nodes it dials the same way.
//
// A configured peer gets it over the connection this node dialled to it,
// or, while that one is down, over the one the peer dialled to us; any
// other node (an observer, a node that lists us but that we do not list)
// over the connection it dialled to us. A node connected neither way misses
// it: purges are not kept for later. A Purge with a field over its limit
// (group 1024 bytes, path 4096) is logged and dropped, and so is one of an
// empty prefix (the whole group), which receivers refuse (purgeReceiver).
func (n *Node) Purge(p Purge) {
	if p.Prefix && p.Path == "" {
		n.log.Error("purge of a whole group (empty prefix) refused; not sent", zap.String("group", p.Group))
		return
	}
	b, err := appendPurge(nil, &p)
	if err != nil {
		n.log.Error("encoding purge", zap.String("group", p.Group), zap.Int("path_len", len(p.Path)), zap.Error(err))
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	peers := n.peers.Load()
	sent := make(map[string]bool, len(peers.order))
	for _, pr := range peers.order {
		if q := pr.out.Load(); q != nil {
			q.enqueue(b)
			sent[pr.nameNow()] = true
		}
	}
	// A node that dialled us twice (a new connection while the old one
	// is not yet found dead) has two subscriptions but reads only its
	// current connection: sending to both delivers once.
	for s := range n.subs {
		if !sent[s.name] {
			s.enqueue(b)
		}
	}
}

func (n *Node) broadcast(frames []byte) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for s := range n.subs {
		s.enqueue(frames)
	}
}
