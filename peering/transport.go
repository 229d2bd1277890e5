// Package peering connects the nodes of a shardcache cluster: a
// consistent-hash ring over node names (ring.go), a small binary protocol
// over QUIC with mutual TLS 1.3 (protocol.go, messages.go, tls.go), and a
// Node that owns one UDP socket, accepts peers on it and dials them from it
// (transport.go, server.go, client.go).
//
// A Node fetches items from peers' memory (Fetch), serves its own through a
// Backend, and keeps every peer informed of the items it owns: on connect it
// streams a snapshot of its table of content (or, to a peer that reconnects,
// only the numbered changes since: Config.Resume), then deltas (Publish) and
// ready-state changes (PublishReady). It advertises where its HTTP site is
// reached (Config.Lan) and its State (the ring epoch it uses and its
// content groups, Config.State), and passes purges to every node it is
// connected to (Purge). What it learns from peers arrives as Events.
//
// The peer list, the advertised LAN address and State can change while the
// Node runs (SetPeers, SetLan, SetState): a configuration reload keeps the
// socket and the connections that did not change.
//
// The package imports no Caddy package and not the shard package: it takes a
// *zap.Logger and a Config, and the application plugs its store in as a
// Backend.
package peering

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"go.uber.org/zap"
)

// Backend is what a Node serves from: the application's store.
type Backend interface {
	// Get returns the metadata and body of the item req names, from this
	// node's memory or storage. It never forwards to another node (one
	// hop: nodes whose rings disagree cannot deadlock). It returns
	// ErrNotFound (or an error wrapping it) for an item it does not hold
	// at req.Version, other *Error sentinels to choose a status, and any
	// other error for ErrInternal. For a range (req.Length > 0) the body
	// is the bytes of the range, ErrBadRequest when req.Offset is past the
	// end. The body must not be modified afterwards; the response's Size is
	// len(body).
	Get(ctx context.Context, req Request) (Meta, []byte, error)

	// TOC writes this node's table of content to w, for a peer that
	// connects or, when w.Only() names a group, that group's for every
	// connected peer (Node.Resync): for each group, w.Group, then, if it
	// returns true, w.Item for each item this node holds in it. It is
	// called on the peer's own goroutine and may take as long as the
	// table is large (w writes as it goes, in bounded frames): it must
	// not hold locks that Publish needs. It must reflect every change
	// already passed to Node.Publish; changes published meanwhile reach
	// the peer after it.
	TOC(w *TOCWriter) error

	// Ready reports whether this node has finished priming and wants
	// traffic.
	Ready() bool
}

// Peer is a cluster member to dial.
type Peer struct {
	// Name is the peer's node name: the DNS name in its certificate and
	// the name in its HELLO. "" lists a peer by address only (one found
	// in DNS records, say): the node dials Addr, accepts a certificate
	// from the cluster CA whatever DNS name it carries, and learns the
	// peer's name from its HELLO, which must be one of those names (see
	// EventNamed). A name is never derived from an address.
	Name string
	// Addr is its UDP address, host:port. Required.
	Addr string
}

// PeerState is what a Node knows about one configured peer.
type PeerState struct {
	// Name is the peer's name: as configured, or for a peer listed by
	// address only the name learned from its HELLO (Discovered), ""
	// until then, and while the node answering there conflicts with
	// another peer or is this node itself (see EventNamed).
	Name string
	Addr string
	// Discovered: the peer is listed by address only and Name was learned
	// from its HELLO.
	Discovered bool
	// Up: our connection to the peer is established and its HELLO arrived.
	Up bool
	// Ready: the peer last said it is ready (primed). Meaningful when Up.
	Ready bool
	// LastSeen is when the peer last showed it was alive (connected, sent
	// a control frame, answered a fetch), or when it was found down.
	LastSeen time.Time
	// Lan is the address of the peer's HTTP site that it advertised in
	// its last HELLO (its Config.Lan) or since (its SetLan); "" if it
	// advertised none or never connected. Kept while the peer is down, and
	// when SetPeers changes its address.
	Lan string
	// State is the State the peer advertised in its last HELLO (its
	// Config.State) or since (its SetState); zero if it advertised none or
	// never connected. Kept while the peer is down, and when SetPeers
	// changes its address, like Lan.
	State State
}

// EventKind says what an Event reports.
type EventKind uint8

// Event kinds.
const (
	// EventUp: a peer is connected; Ready is its ready state. Its snapshot
	// follows.
	EventUp EventKind = iota + 1
	// EventDown: the connection to a peer died or was refused, or
	// SetPeers removed the peer or changed its address while it was up.
	EventDown
	// EventReady: a peer's ready state changed to Ready.
	EventReady
	// EventSnapshot: the peer's table of content is complete: every group
	// it has was sent (each between two EventSync). A group of the peer's
	// that had no EventSync since its EventUp is gone.
	EventSnapshot
	// EventDelta: a change to a peer's table of content.
	EventDelta
	// EventPurge: a node asked us to drop cached content (Node.Purge).
	// The sender may be a configured peer or an observer.
	EventPurge
	// EventState: a peer's State changed (its Node.SetState); State is
	// the new one. Ordered with the peer's other events: what the peer
	// published before its SetState arrives before it.
	EventState
	// EventSync: a group's part of the peer's table of content begins or
	// ends (Sync): at connect, before EventSnapshot, or later when the
	// peer publishes the group whole again.
	EventSync
	// EventTOC: items of the snapshot that the last EventSync of
	// Delta.Group began (Delta.Upserts), as each frame arrives.
	EventTOC
	// EventNamed: the name of a peer listed by address only (Peer.Name
	// "") was learned from its HELLO, for the first time or as another
	// name than before (another node answers at that address now): Peer
	// is the name, Addr the address. It comes just before that peer's
	// EventUp; the old name's EventDown, if it was up, came before it.
	// From then on the peer's events carry that name and Fetch reaches it
	// by that name. A name that is this node's own, a configured peer's,
	// or one another address holds on a live connection is not learned:
	// the connection is closed (CloseDuplicate), a warning names both
	// addresses, and no event is raised.
	EventNamed
)

// String names the kind, for logs.
func (k EventKind) String() string {
	switch k {
	case EventUp:
		return "up"
	case EventDown:
		return "down"
	case EventReady:
		return "ready"
	case EventSnapshot:
		return "snapshot"
	case EventDelta:
		return "delta"
	case EventPurge:
		return "purge"
	case EventState:
		return "state"
	case EventNamed:
		return "named"
	case EventSync:
		return "sync"
	case EventTOC:
		return "toc"
	}
	return fmt.Sprintf("EventKind(%d)", uint8(k))
}

// Event reports a change in what a Node knows about a peer. Events of one
// peer are delivered in order, from the goroutine of the connection this
// node dialled to it: the callback must return quickly (it holds up that
// peer's control stream). EventPurge is the exception: a purge comes on
// whichever connection of the pair the sender used, possibly the one the
// sender dialled, so it is not ordered with the peer's other events and
// may be delivered concurrently with them.
type Event struct {
	Kind EventKind
	// Peer is the peer's name (for EventPurge, the sender's, which may be
	// an observer that is not a configured peer).
	Peer string
	// Addr is set for EventNamed: the address the peer was listed at.
	Addr string
	// Ready is set for EventUp and EventReady.
	Ready bool
	// Lan is set for EventUp: the peer's advertised Config.Lan.
	Lan string
	// State is set for EventUp (from the peer's HELLO) and EventState.
	// The callback may keep it: it is not modified afterwards.
	State State
	// Sync is set for EventSync.
	Sync Sync
	// Delta is set for EventDelta and EventTOC.
	Delta Delta
	// Purge is set for EventPurge.
	Purge Purge
}

// Config configures a Node. Zero durations and sizes mean the defaults.
type Config struct {
	// Name is this node's name: in its certificate, its HELLO and the
	// ring. Required.
	Name string

	// Addr is the UDP address to listen on and dial from, e.g.
	// "10.0.0.1:7946". Ignored when PacketConn is set.
	Addr string

	// Lan, if set, is where this node's HTTP site is reached, host:port
	// (e.g. "10.0.1.1:443"): it is advertised in HELLO, and peers and
	// observers report it in PeerState.Lan. At most 1024 bytes.
	// Node.SetLan changes it later.
	Lan string

	// State is what this node initially advertises about its ring and
	// groups (see State for its bounds; Listen refuses a State that breaks
	// them). Groups are sorted by name here if they are not. Node.SetState
	// changes it later.
	State State

	// PacketConn, if set, is the socket to use instead of binding Addr.
	// The Node closes it on Close.
	PacketConn net.PacketConn

	// Peers are the cluster members to dial, by name or by address only
	// (see Peer). An entry named Name is skipped; an entry by address
	// only whose address a named entry also has is skipped (the named
	// one covers it). Node.SetPeers changes them later.
	Peers []Peer

	// TLS is this node's identity and the cluster CA. Required.
	// Node.SetCredentials changes them later.
	TLS *Credentials

	// Backend serves fetches and the table of content. nil (an observer)
	// answers every fetch with ErrUnavailable and sends an empty table.
	Backend Backend

	// OnEvent receives peer events; nil drops them.
	OnEvent func(Event)

	// OnSpread receives the SPREAD and HELD frames of spreading (push.go)
	// with their sender's name, on that connection's goroutine: it must
	// return quickly. nil drops them.
	OnSpread func(from string, s Spread)

	// Resume, if set, returns what this node holds of the tables of
	// content of the peer named peer, complete as of the numbered change
	// of each group (see Resume): sent when dialling it, so that it sends
	// only the changes since. nil, or an empty answer: whole snapshots.
	Resume func(peer string) []Resume

	// Observer marks a node that holds no content and is in no ring (a
	// content director): peers serve it their tables of content and keep
	// it out of their rings.
	Observer bool

	// Logger receives connection events; nil means no logs.
	Logger *zap.Logger

	// FetchTimeout bounds a Fetch whose context has no earlier deadline.
	// Default 2s.
	FetchTimeout time.Duration

	// StreamTimeout is the deadline the server sets on every request
	// stream, and on every write to a control stream. Default 10s.
	StreamTimeout time.Duration

	// MaxBodySize is the largest body Fetch accepts: a response that
	// announces more is refused (ErrTooLarge) before anything is
	// allocated for it, and one that announces less never gets a larger
	// buffer. Default 4 MiB + 64 KiB (DefaultMaxBodySize).
	MaxBodySize int64

	// IdleTimeout bounds how long a peer that stops answering (crashed,
	// cut off: no CONNECTION_CLOSE) still counts as up: it is declared
	// down at most this long after the last packet that came from it
	// (measured on loopback with the default: 0.78-1.0s after a crash).
	// A fifth of it is the keep-alive period, the rest the QUIC idle
	// timeout (see quicConfig); quic-go waits at least 3 PTOs, which only
	// matters on a path whose round trip is a sizeable part of it. A peer
	// that closes cleanly is seen down at once. Default 1s.
	IdleTimeout time.Duration
}

// Bounds on what a peer controls. A holder of a cluster certificate is
// not trusted to be well-behaved; each resource it can make a node spend
// is bounded:
//
//   - handshakes from anyone: maxHandshakes in progress, then Retry;
//   - connections: maxConnsPerName per certificate name (acceptLoop);
//   - streams: maxIncomingStreams per connection (quic-go refuses more),
//     each request under StreamTimeout, one request frame of at most
//     MaxFrameSize; one control stream per connection (its first);
//   - bytes in flight: quic-go's flow control, at most maxConnWindow per
//     connection (streamWindow per stream);
//   - frames: MaxFrameSize each, checked before the payload is read;
//     every string field 1024 bytes (paths 4096), variants maxVariants,
//     State groups maxGroups, all checked before allocating;
//   - control frames queued for a peer that does not read:
//     maxSubscriberQueue, then the connection is closed;
//   - a peer's snapshot: nothing is held until its end (each frame is
//     passed on as it arrives), but one of more than maxSnapshotItems
//     items closes the connection;
//   - a response body: MaxBodySize, checked before allocating;
//   - purges: one of a whole group is refused; others are passed on one
//     event per frame, as fast as the peer sends them (the application
//     bounds its own queue of them).
//
// Defaults.
const (
	DefaultFetchTimeout  = 2 * time.Second
	DefaultStreamTimeout = 10 * time.Second
	// DefaultMaxBodySize is one chunk and some slack: the cluster
	// fetches a body larger than a chunk chunk by chunk (range requests),
	// so no response it asks for is larger, and a peer cannot make a
	// Fetch allocate more than this whatever size it announces.
	DefaultMaxBodySize = chunkSize + 64<<10
	DefaultIdleTimeout = time.Second

	// chunkSize is the unit the cluster holds and moves large bodies in:
	// shard.ChunkSize (4 MiB), which this package cannot import.
	chunkSize = 4 << 20

	// maxIncomingStreams bounds concurrent requests per peer connection
	// (each is one goroutine holding one body): comfortably above the
	// 32-way concurrency a node generates, and a peer over it waits in
	// OpenStreamSync instead of piling goroutines up here. The control
	// stream takes one slot.
	maxIncomingStreams = 256

	// streamWindow is the initial per-stream receive window: the largest
	// value moved in one go (a chunk, chunkSize = 4 MiB) never waits
	// for a window update, even on a high bandwidth-delay path. On
	// loopback no window from quic-go's defaults to 16 MiB / 1 GiB changed
	// throughput by more than the noise (BenchmarkQUICWindows): there the
	// cost is CPU per packet, not waiting.
	streamWindow = 4 << 20

	// connWindow is the initial connection receive window: 8 such values
	// in flight at once before auto-tuning raises it towards
	// maxConnWindow = 32 × 4 MiB.
	connWindow    = 32 << 20
	maxConnWindow = 128 << 20

	// maxSnapshotItems bounds the items of a peer's snapshot at connect.
	// The snapshot is passed on frame by frame, but the application keeps
	// what it lists: a peer that never ends its snapshot must not grow
	// that without end. 4 Mi items is far more than a node's share of any
	// site this cache serves; past it the connection is closed as a
	// protocol error.
	maxSnapshotItems = 4 << 20

	// tocBatch is about how many bytes of a snapshot are encoded before
	// they are written to the stream: the memory a snapshot takes on the
	// sending side, whatever the table's size.
	tocBatch = 256 << 10

	// maxSubscriberQueue bounds the control frames queued for one peer that
	// does not read them; past it the connection is closed and the peer
	// re-dials for a fresh snapshot.
	maxSubscriberQueue = 64 << 20

	minBackoff = 50 * time.Millisecond
	maxBackoff = time.Second
)

// maxLogBytes bounds the encoded changes a group's change log keeps for
// peers that reconnect (and maxLogChanges their number): a peer that missed
// more gets a snapshot instead. 4 MiB is some 30,000 changed files: far
// more than a site changes while a peer restarts. Variables for tests.
var (
	maxLogBytes   = 4 << 20
	maxLogChanges = 1 << 16
)

// quicConfig is every quic-go setting of peer connections, in one place.
// idle is Config.IdleTimeout: the longest a silent peer stays up.
func quicConfig(idle time.Duration) *quic.Config {
	keepAlive := max(idle/5, time.Millisecond) // 0 would disable keep-alives
	return &quic.Config{
		// One configuration for every peer.
		GetConfigForClient: nil,
		// All nodes run the same code: RFC 9000 only, no version dance.
		Versions: []quic.Version{quic.Version1},
		// Peers are on a LAN: a handshake that has heard nothing for 2s
		// is dead, and the dial loop retries it.
		HandshakeIdleTimeout: 2 * time.Second,
		// quic-go closes a connection on which nothing has arrived for
		// this long (never less than 3 PTOs), counted from the last packet
		// received or, if later, the first ack-eliciting packet sent after
		// it. The keep-alive below is such a packet, sent at most
		// KeepAlivePeriod after the last receipt, so a peer that goes silent
		// is found down at most keepAlive + (idle - keepAlive) = idle after
		// the last packet it sent. The timeout in force is the smaller of
		// ours and the peer's, but quic-go raises an advertised value under
		// 5s to 5s (MinRemoteIdleTimeout): below 5s each side keeps its own.
		// Applies once the handshake is complete.
		MaxIdleTimeout: max(idle-keepAlive, time.Millisecond), // 0 would mean 30s
		// No store for NEW_TOKEN tokens: connections are few and
		// long-lived, and a token would only spare a re-dial the Retry
		// round trip during a handshake flood (see maxHandshakes: the
		// acceptor asks for a Retry only then; a Retry token needs no
		// store).
		TokenStore: nil,
		// See streamWindow / connWindow. The stream maximum leaves room
		// for auto-tuning past the largest value.
		InitialStreamReceiveWindow:     streamWindow,
		MaxStreamReceiveWindow:         4 * streamWindow,
		InitialConnectionReceiveWindow: connWindow,
		MaxConnectionReceiveWindow:     maxConnWindow,
		// No veto on window growth: the maxima above are the bound.
		AllowConnectionWindowIncrease: nil,
		// See maxIncomingStreams. Dialled connections override it to -1:
		// the acceptor never opens streams towards the dialer.
		MaxIncomingStreams: maxIncomingStreams,
		// The protocol uses bidirectional streams only.
		MaxIncomingUniStreams: -1,
		// When nothing has arrived for min(KeepAlivePeriod,
		// MaxIdleTimeout/2) (and at least 1.5 PTOs), quic-go sends one PING,
		// then none until something arrives; if the PING or its ACK is
		// lost, loss recovery probes again several times within the idle
		// timeout. Each side does so, so an idle connection carries a
		// PING and an ACK each way about every keepAlive (about ten small
		// packets a second each way at the default); a busy connection
		// carries none.
		KeepAlivePeriod: keepAlive,
		// 0: quic-go's default (1280), raised by path MTU discovery.
		InitialPacketSize: 0,
		// PMTUD raises packets from 1280 to quic-go v0.63's ceiling of
		// 1452 bytes (protocol.MaxPacketBufferSize; jumbo frames are never
		// used). Measured on loopback (BenchmarkQUICWindows): turning it
		// off costs 5-24% at 1-4 MiB, where QUIC's cost is per packet.
		DisablePathMTUDiscovery: false,
		// No 0-RTT: a replayed request is harmless, but a replayed
		// HELLO from a stolen ticket is not worth the saved round trip on
		// connections that live for hours.
		Allow0RTT: false,
		// Unreliable datagrams are not used.
		EnableDatagrams: false,
		// Streams are reset whole.
		EnableStreamResetPartialDelivery: false,
		// No qlog.
		Tracer: nil,
	}
}

// maxHandshakes is the number of inbound handshakes in progress above
// which a new one must first prove its source address with a Retry (one
// more round trip, RFC 9000 section 8.1.2). A cluster's nodes dial each
// other once, plus re-dials after a restart: a few handshakes at a time,
// far under 64. More means a flood from addresses that need not be real:
// each Initial from an unvalidated address makes the server keep a
// connection and do TLS work, and send up to three times the bytes it got
// to that address. With the Retry, only addresses that answer get state,
// and the flood costs one stateless packet each.
const maxHandshakes = 64

// handshakeKey is the connection context key of a *handshake.
type handshakeKey struct{}

// handshake is one inbound handshake in progress, counted in
// Node.handshakes until it ends: accepted (handshakeDone) or failed
// (its context ends).
type handshake struct{ once sync.Once }

// connContext is the Transport's ConnContext: called for every inbound
// connection attempt the server keeps state for, it counts the handshake
// until it ends.
func (n *Node) connContext(ctx context.Context, _ *quic.ClientInfo) (context.Context, error) {
	h := &handshake{}
	n.handshakes.Add(1)
	context.AfterFunc(ctx, func() { n.endHandshake(h) })
	return context.WithValue(ctx, handshakeKey{}, h), nil
}

// handshakeDone stops counting conn's handshake: the listener accepted it.
func (n *Node) handshakeDone(conn *quic.Conn) {
	if h, ok := conn.Context().Value(handshakeKey{}).(*handshake); ok {
		n.endHandshake(h)
	}
}

func (n *Node) endHandshake(h *handshake) {
	h.once.Do(func() {
		if n.handshakes.Add(-1) <= maxHandshakes/2 && n.validating.Load() && n.validating.Swap(false) {
			n.log.Info("handshakes in progress back to normal; source-address validation off")
		}
	})
}

// verifySourceAddress is the Transport's VerifySourceAddress, called for
// each Initial packet without a token that would start a connection: it
// asks for a Retry while more than maxHandshakes handshakes are in
// progress. Logged once each time validation turns on.
func (n *Node) verifySourceAddress(addr net.Addr) bool {
	c := n.handshakes.Load()
	if c <= maxHandshakes {
		return false
	}
	if !n.validating.Load() && !n.validating.Swap(true) {
		n.log.Warn("too many handshakes in progress: new connections must validate their source address (Retry)",
			zap.Int64("handshakes", c), zap.Int("limit", maxHandshakes), zap.Stringer("from", addr))
	}
	return true
}

// ErrPeerDown is returned by Fetch for a peer with no live connection (or
// one that is not, or no longer, configured).
var ErrPeerDown = errors.New("peering: peer down")

// ErrClosed is returned by Fetch after Close.
var ErrClosed = errors.New("peering: node closed")

// Node is one cluster member's peer endpoint: one UDP socket and one
// quic.Transport that accepts peers and dials them, one long-lived
// connection per configured peer, one stream per request.
type Node struct {
	cfg     Config
	log     *zap.Logger
	backend Backend
	qconf   *quic.Config
	pc      net.PacketConn
	tr      *quic.Transport
	ln      *quic.Listener

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// peers is the configured peer set: replaced whole by SetPeers (under
	// mu), read without a lock.
	peers atomic.Pointer[peerTable]
	// learned maps each name learned by a peer listed by address only to
	// that peer (see claimName): replaced whole under mu, read without a
	// lock (Fetch). Never modified once stored.
	learned atomic.Pointer[map[string]*peer]
	// draining holds, per name, the done channel of a peer that SetPeers
	// removed while it held the name: no other peer raises events under
	// that name before it is closed (see drainWait). Under mu.
	draining map[string]<-chan struct{}
	// lan is the advertised LAN address (Config.Lan, then SetLan); stored
	// under mu.
	lan atomic.Pointer[string]
	// state is the advertised State (Config.State, then SetState); stored
	// under mu, never modified once stored.
	state atomic.Pointer[State]

	inflight inflight

	tlsCreds nodeCreds // current TLS credentials (tls.go)

	// maxSnapshot is maxSnapshotItems (lowered by tests).
	maxSnapshot int

	// logs holds each group's change log (under mu).
	logs map[string]*changeLog
	// tocSent and deltaSent count the bytes of tables of content sent
	// (TOCBytesSent) and of changes published (DeltaBytes).
	tocSent, deltaSent atomic.Int64

	// handshakes counts the inbound handshakes in progress; validating is
	// set while they are over maxHandshakes (see verifySourceAddress).
	handshakes atomic.Int64
	validating atomic.Bool

	// stalls counts the times the node closed its connections after a
	// stall of the process (stallLoop).
	stalls atomic.Int64

	mu        sync.Mutex
	inbound   map[*quic.Conn]struct{}
	perName   map[string]int // inbound connections per certificate name
	subs      map[*subscriber]struct{}
	closed    bool
	closeOnce sync.Once
}

// Listen binds the node's UDP socket, starts accepting peers and starts
// dialling the configured peers in the background.
func Listen(cfg Config) (*Node, error) {
	if cfg.Name == "" {
		return nil, errors.New("peering: node name required")
	}
	if cfg.TLS == nil {
		return nil, errors.New("peering: TLS credentials required")
	}
	if cfg.Lan != "" {
		if err := checkLan(cfg.Lan); err != nil {
			return nil, fmt.Errorf("peering: LAN address %.64q: %v", cfg.Lan, err)
		}
	}
	state, err := normState(cfg.State)
	if err != nil {
		return nil, fmt.Errorf("peering: state: %v", err)
	}
	if err := cfg.TLS.checkName(cfg.Name); err != nil {
		return nil, err
	}
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = DefaultFetchTimeout
	}
	if cfg.StreamTimeout <= 0 {
		cfg.StreamTimeout = DefaultStreamTimeout
	}
	if cfg.MaxBodySize <= 0 {
		cfg.MaxBodySize = DefaultMaxBodySize
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	backend := cfg.Backend
	if backend == nil {
		backend = noBackend{}
	}

	n := &Node{
		cfg:     cfg,
		log:     log.With(zap.String("node", cfg.Name)),
		backend: backend,
		qconf:   quicConfig(cfg.IdleTimeout),
		inbound: make(map[*quic.Conn]struct{}),
		perName: make(map[string]int),
		subs:    make(map[*subscriber]struct{}),
		logs:    make(map[string]*changeLog),
	}
	n.inflight.m = make(map[*quic.Stream]time.Time)
	n.maxSnapshot = maxSnapshotItems
	n.peers.Store(&peerTable{})
	n.learned.Store(&map[string]*peer{})
	n.draining = make(map[string]<-chan struct{})
	lan := cfg.Lan
	n.lan.Store(&lan)
	n.state.Store(&state)
	peers, err := checkPeers(cfg.Name, cfg.Peers)
	if err != nil {
		return nil, err
	}

	pc := cfg.PacketConn
	if pc == nil {
		var err error
		if pc, err = net.ListenPacket("udp", cfg.Addr); err != nil {
			return nil, fmt.Errorf("peering: binding %s: %w", cfg.Addr, err)
		}
	}
	n.pc = pc
	n.tr = &quic.Transport{Conn: pc, ConnContext: n.connContext, VerifySourceAddress: n.verifySourceAddress}
	n.tlsCreds.cur.Store(cfg.TLS)
	ln, err := n.tr.Listen(n.serverTLS(), n.qconf)
	if err != nil {
		n.tr.Close()
		pc.Close()
		return nil, fmt.Errorf("peering: listening on %s: %w", pc.LocalAddr(), err)
	}
	n.ln = ln
	n.ctx, n.cancel = context.WithCancel(context.Background())

	n.wg.Add(3)
	go n.acceptLoop()
	go n.sweepLoop()
	go n.stallLoop()
	n.mu.Lock()
	n.setPeers(peers)
	n.mu.Unlock()
	n.log.Info("peering listening", zap.Stringer("addr", pc.LocalAddr()), zap.Int("peers", len(peers)))
	return n, nil
}

// checkPeers returns the peers to dial (see normPeers), or an error for
// the first entry normPeers leaves out.
func checkPeers(self string, peers []Peer) ([]Peer, error) {
	out, bad := normPeers(self, peers)
	if len(bad) > 0 {
		return nil, fmt.Errorf("peering: peer %q at %q: %s", bad[0].Name, bad[0].Addr, bad[0].why)
	}
	return out, nil
}

// badPeer is an entry normPeers leaves out, and why.
type badPeer struct {
	Peer
	why string
}

// normPeers returns the peers to dial: the entries of peers in order, but
// for those named self (skipped silently), those by address only whose
// address a named entry also has (skipped silently: the named entry covers
// them), and those it returns in bad: without an address, a name listed
// twice, an address listed twice by address only (the first entry of each
// is kept).
func normPeers(self string, peers []Peer) (out []Peer, bad []badPeer) {
	out = make([]Peer, 0, len(peers))
	namedAddr := make(map[string]bool, len(peers))
	for _, p := range peers {
		if p.Name != "" && p.Name != self {
			namedAddr[p.Addr] = true
		}
	}
	seen := make(map[string]bool, len(peers))
	seenAddr := make(map[string]bool, len(peers))
	for _, p := range peers {
		switch {
		case p.Name == self:
		case p.Addr == "":
			bad = append(bad, badPeer{p, "an address is required"})
		case p.Name == "" && namedAddr[p.Addr]:
		case p.Name == "" && seenAddr[p.Addr]:
			bad = append(bad, badPeer{p, "address listed twice without a name"})
		case p.Name == "":
			seenAddr[p.Addr] = true
			out = append(out, p)
		case seen[p.Name]:
			bad = append(bad, badPeer{p, "name listed twice"})
		default:
			seen[p.Name] = true
			out = append(out, p)
		}
	}
	return out, bad
}

// peerTable is a configured peer set. Immutable once stored in Node.peers.
type peerTable struct {
	// byName holds the peers listed by name (including those listed by
	// address whose entry SetPeers replaced by one with the learned name
	// at the same address).
	byName map[string]*peer
	// byAddr holds the peers listed by address only.
	byAddr map[string]*peer
	order  []*peer // as configured
}

// lookup returns the peer that Fetch reaches under name: a peer listed by
// name, else one listed by address that learned it; nil if none.
func (n *Node) lookup(name string) *peer {
	if p := n.peers.Load().byName[name]; p != nil {
		return p
	}
	if p := (*n.learned.Load())[name]; p != nil && p.ctx.Err() == nil {
		return p
	}
	return nil
}

// SetPeers makes the configured peers equal to peers, as Config.Peers
// would, without touching the socket. It is idempotent, safe to call
// concurrently with every other method, and returns without waiting for
// any connection:
//
//   - a new peer is dialled at once;
//   - a peer that is no longer listed leaves Peers() and Fetch at once
//     (Fetch then fails with ErrPeerDown); the connection this node
//     dialled to it is closed with CloseRemoved and, if it was up, its
//     EventDown follows (its last event; events already on their way may
//     precede it);
//   - a peer listed at another address is handled as removed and added
//     again: its old connection is closed with CloseRemoved (EventDown if
//     it was up), then it is dialled at the new address (EventUp and a
//     snapshot), never before the old connection's events are delivered.
//     Its PeerState keeps its Lan and LastSeen meanwhile;
//   - a peer listed as before keeps its connection: no re-dial, no new
//     HELLO or snapshot, no event. Only the order of Peers() follows the
//     new list.
//
// Peers listed by address only (Peer.Name "") are keyed by their address:
// one listed at the same address as before keeps its connection and the
// name it learned. One replaced by a named entry for the same address
// keeps its connection if the name is the one it learned (it is then a
// configured peer like any other: no event); otherwise it is removed and
// the named peer dialled. A named entry for a name that a peer listed by
// address holds takes it over: that peer's connection is closed (EventDown
// if it was up) before the named peer raises any event, and it is not
// tracked under that name again while the named entry is listed. In
// general, whenever a peer leaves the name it held, its last event comes
// before the first of the next peer to hold the name.
//
// Connections that other nodes dialled to this one are not affected: a
// removed peer that still lists this node keeps being served like any
// other holder of a cluster certificate that is not configured (an
// observer): it gets the table of content and its purges arrive as
// EventPurge, but it raises no EventUp or EventDown.
//
// Entries that Listen would refuse are left out and logged: one without
// an address, every entry after the first with a given name, and every
// entry by address only after the first with a given address. An entry
// named like this node is skipped silently, as in Listen, and so is one by
// address only whose address a named entry has. After Close, SetPeers does
// nothing.
func (n *Node) SetPeers(peers []Peer) {
	want, bad := normPeers(n.cfg.Name, peers)
	for _, b := range bad {
		n.log.Error("SetPeers: peer left out", zap.String("peer", b.Name), zap.String("peer_addr", b.Addr), zap.String("reason", b.why))
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	n.setPeers(want)
}

// setPeers installs want (checked: see normPeers) as the peer set, starting
// dial loops for new peers and stopping those of removed ones. Called with
// n.mu held, before Close.
func (n *Node) setPeers(want []Peer) {
	old := n.peers.Load()
	t := &peerTable{byName: make(map[string]*peer, len(want)), byAddr: make(map[string]*peer), order: make([]*peer, 0, len(want))}
	learned := maps.Clone(*n.learned.Load())
	kept := make(map[*peer]bool, len(want))
	var added, moved, removed, converted []string
	for _, w := range want {
		var p *peer
		switch {
		case w.Name == "":
			p = old.byAddr[w.Addr]
			if p == nil {
				p = n.newPeer(w, nil)
				added = append(added, w.Addr)
				n.wg.Add(1)
				go n.dialLoop(p, nil)
			}
			t.byAddr[w.Addr] = p
		case old.byName[w.Name] != nil && old.byName[w.Name].addr == w.Addr:
			p = old.byName[w.Name]
			t.byName[w.Name] = p
		default:
			prev := old.byName[w.Name]
			if a := old.byAddr[w.Addr]; prev == nil && a != nil && learned[w.Name] == a {
				// Listed by address until now, under the name it
				// learned: the same peer, now configured by name.
				delete(learned, w.Name)
				a.byAddr.Store(false)
				p = a
				converted = append(converted, w.Name)
				t.byName[w.Name] = p
				break
			}
			var wait []<-chan struct{}
			p = n.newPeer(w, prev)
			if prev == nil {
				added = append(added, w.Name)
			} else {
				moved = append(moved, w.Name)
				prev.cancel(errPeerMoved)
				kept[prev] = true // not reported as removed
				wait = append(wait, prev.done)
			}
			if h := learned[w.Name]; h != nil {
				// A peer listed by address holds the name: it gives it
				// up, and its session under it ends before p's events.
				delete(learned, w.Name)
				if ch := n.yieldName(h, errNameConfigured); ch != nil {
					wait = append(wait, ch)
				}
			}
			if ch := n.drainWait(w.Name); ch != nil {
				wait = append(wait, ch)
			}
			n.wg.Add(1)
			go n.dialLoop(p, wait)
			t.byName[w.Name] = p
		}
		kept[p] = true
		t.order = append(t.order, p)
	}
	for _, p := range old.order {
		if kept[p] {
			continue
		}
		name := p.nameNow()
		if p.byAddr.Load() {
			removed = append(removed, p.addr)
			if name != "" && learned[name] == p {
				delete(learned, name)
				n.draining[name] = p.done
			}
		} else {
			removed = append(removed, name)
			n.draining[name] = p.done
		}
		p.cancel(errPeerRemoved)
	}
	n.learned.Store(&learned)
	n.peers.Store(t)
	if old.order != nil && len(added)+len(moved)+len(removed)+len(converted) > 0 {
		n.log.Info("peer list changed", zap.Strings("added", added), zap.Strings("moved", moved), zap.Strings("removed", removed),
			zap.Strings("now_named", converted))
	}
}

var (
	errPeerRemoved = errors.New("no longer a configured peer")
	errPeerMoved   = errors.New("peer address changed")
)

// newPeer makes the peer to dial for w. prev, if set, is the one it
// replaces (same name, other address): its LAN address and last sighting
// carry over.
func (n *Node) newPeer(w Peer, prev *peer) *peer {
	p := &peer{addr: w.Addr, done: make(chan struct{})}
	name := w.Name
	p.name.Store(&name)
	p.byAddr.Store(w.Name == "")
	p.ctx, p.cancel = context.WithCancelCause(n.ctx)
	if prev != nil {
		p.lan.Store(prev.lan.Load())
		p.st.Store(prev.st.Load())
		p.lastSeen.Store(prev.lastSeen.Load())
	}
	return p
}

// SetLan changes the LAN address this node advertises (Config.Lan; ""
// advertises none), validated as Listen validates Config.Lan. Nodes that
// dialled this one (peers and observers) get it in a LAN control frame and
// report it in PeerState.Lan; nodes that connect later get it in HELLO. No
// event is raised on either side. Safe to call concurrently with every
// other method.
func (n *Node) SetLan(lan string) error {
	if lan != "" {
		if err := checkLan(lan); err != nil {
			return fmt.Errorf("peering: LAN address %.64q: %v", lan, err)
		}
	}
	b, err := appendLan(nil, lan)
	if err != nil {
		return fmt.Errorf("peering: LAN address %.64q: %v", lan, err)
	}
	// Stored and sent under mu: a subscriber registered before gets the
	// frame, one registered after reads the new address for its HELLO,
	// and concurrent calls reach every subscriber in the same order.
	n.mu.Lock()
	defer n.mu.Unlock()
	if *n.lan.Load() == lan {
		return nil
	}
	n.lan.Store(&lan)
	for s := range n.subs {
		s.enqueue(b)
	}
	n.log.Info("advertised LAN address changed", zap.String("lan", lan))
	return nil
}

// SetState changes the State this node advertises (Config.State). It is
// stored, sent in a STATE control frame to every node that dialled this
// one (peers and observers), through the same ordered queue as Publish and
// PublishReady: what was published before SetState reaches them before
// the new State, and they raise an EventState and report it in
// PeerState.State. Nodes that connect later get it in HELLO. A State equal
// to the current one sends nothing.
//
// s is copied; its groups are sorted by name if they are not. A State that
// breaks the bounds (more than 256 groups, a group name empty or over 1024
// bytes, a name listed twice, over about 60 KiB encoded) is logged as an
// error and ignored: the node keeps advertising its current State. Safe to
// call concurrently with every other method.
func (n *Node) SetState(s State) {
	s, err := normState(s)
	if err != nil {
		n.log.Error("SetState: state refused; keeping the current one", zap.Int("groups", len(s.Groups)), zap.Error(err))
		return
	}
	b, err := appendStateFrame(nil, &s)
	if err != nil { // cannot happen: normState checked it
		n.log.Error("SetState: encoding state", zap.Error(err))
		return
	}
	// Stored and sent under mu, like SetLan: a subscriber registered
	// before gets the frame after everything broadcast before it, one
	// registered after reads the new State for its HELLO.
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.state.Load().Equal(s) {
		return
	}
	n.state.Store(&s)
	for sub := range n.subs {
		sub.enqueue(b)
	}
	n.log.Info("advertised state changed", zap.Uint64("epoch", s.Epoch), zap.Int("groups", len(s.Groups)))
}

// State returns the State this node advertises: a copy, the caller's to
// keep.
func (n *Node) State() State { return n.state.Load().Clone() }

// normState returns a copy of s with its groups sorted by name, or an
// error if it breaks the bounds (checkState).
func normState(s State) (State, error) {
	s = s.Clone()
	if len(s.Groups) == 0 {
		s.Groups = nil
	}
	slices.SortFunc(s.Groups, func(a, b GroupState) int { return strings.Compare(a.Name, b.Name) })
	if err := checkState(s); err != nil {
		return s, err
	}
	return s, nil
}

// Addr returns the address of the node's UDP socket.
func (n *Node) Addr() net.Addr { return n.pc.LocalAddr() }

// Name returns the node's name.
func (n *Node) Name() string { return n.cfg.Name }

// Peers returns the state of every configured peer, in configured order,
// those listed by address only included (Name "" until it is learned).
func (n *Node) Peers() []PeerState {
	t := n.peers.Load()
	out := make([]PeerState, 0, len(t.order))
	for _, p := range t.order {
		out = append(out, p.state())
	}
	return out
}

// PeerUp reports whether the peer Fetch reaches under name is connected
// (up) and primed (ready), as Peers reports them, without building every
// peer's state: the cluster asks it per request and per file it primes.
func (n *Node) PeerUp(name string) (up, ready bool) {
	p := n.lookup(name)
	if p == nil {
		return false, false
	}
	return p.conn.Load() != nil, p.ready.Load()
}

// Close closes every connection with CloseShutdown (peers see this node
// down at once), stops the background goroutines and releases the socket.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.mu.Lock()
		n.closed = true
		conns := make([]*quic.Conn, 0, len(n.inbound))
		for c := range n.inbound {
			conns = append(conns, c)
		}
		n.mu.Unlock()
		// Cancelling n.ctx makes every dial loop close its connection
		// (with CloseShutdown) and return.
		n.cancel()
		n.ln.Close()
		var wg sync.WaitGroup
		for _, c := range conns {
			wg.Go(func() { c.CloseWithError(CloseShutdown, "shutting down") })
		}
		wg.Wait()
		n.wg.Wait()
		n.tr.Close()
		n.pc.Close()
		n.log.Info("peering closed")
	})
	return nil
}

func (n *Node) emit(e Event) {
	if n.cfg.OnEvent != nil {
		n.cfg.OnEvent(e)
	}
}

// noBackend serves nothing: an observer's backend.
type noBackend struct{}

func (noBackend) Get(context.Context, Request) (Meta, []byte, error) {
	return Meta{}, nil, ErrUnavailable
}
func (noBackend) TOC(*TOCWriter) error { return nil }
func (noBackend) Ready() bool          { return false }
