package peering

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/quic-go/quic-go"
)

// Request asks a peer for one item's body.
type Request struct {
	// Group names the content tree.
	Group string
	// Path is the item's path in the group ("/css/site.css").
	Path string
	// Version is the content hash the caller expects; "" asks for the
	// current version. A server that holds another version answers
	// ErrNotFound.
	Version string
	// Encoding asks for a precompressed variant ("br", "gzip", "zstd");
	// "" asks for the identity body.
	Encoding string
	// Epoch is the sender's ring epoch (Ring.Epoch); 0 if unknown.
	Epoch uint64

	// Offset and Length ask for a byte range of the body: the Length
	// bytes from Offset on (fewer when the body ends first). Length 0 asks
	// for the whole body (Offset must be 0). A node fetches a large item
	// chunk by chunk this way, and only the chunks a Range request needs.
	Offset, Length int64

	// Peer is the name of the node that sent the request, from its
	// verified certificate. Set by the server; not sent on the wire.
	Peer string

	// MetaOnly: a META request (Node.FetchMeta). The backend answers the
	// item's current metadata with its Variants, and no body. Set by the
	// server; Version, Encoding and the range are not sent.
	MetaOnly bool
}

// Meta is the metadata of one item: what a table of content lists and what
// heads a response. Immutable once built; safe to share.
type Meta struct {
	// Path is the item's path in its group.
	Path string
	// Version is the content hash that names this version of the item.
	Version string
	// Size is the length of the (identity) content in bytes; in a response
	// to a request for a variant, the length of the variant's bytes.
	Size int64
	// ContentType is the MIME type.
	ContentType string
	// ModTime is the modification time, with nanosecond precision.
	ModTime time.Time
	// ETag is the strong entity tag, quoted.
	ETag string
	// Encoding is the Content-Encoding of a response's body ("" identity).
	// Empty in tables of content.
	Encoding string
	// Variants lists the precompressed siblings, in preference order.
	// Empty in responses.
	Variants []Variant
}

// Variant describes a precompressed encoding of an item.
type Variant struct {
	// Encoding is the Content-Encoding token: "br", "gzip" or "zstd".
	Encoding string
	// Size is the length of the compressed bytes.
	Size int64
	// ETag is the strong entity tag of the compressed bytes.
	ETag string
}

// GroupTOC is one group's table of content: the items a node owns in it.
type GroupTOC struct {
	Group string
	Items []Meta
}

// Delta is a change to a node's table of content.
type Delta struct {
	// Group names the content tree that changed.
	Group string
	// Upserts are items added or changed.
	Upserts []Meta
	// Deletes are the paths of items removed.
	Deletes []string
	// Seq is the sender's number for this change in the group's change
	// log (see Sync); 0 when the sender numbers none. Set on received
	// deltas; Node.Publish numbers the deltas it sends itself.
	Seq uint64
}

// SyncMode says what follows an EventSync that begins a group.
type SyncMode uint8

// Sync modes.
const (
	// SyncSnapshot: the group's whole table of content follows, as
	// EventTOC, as of change Seq of log Log; entries the receiver holds
	// for the group that it does not list are gone.
	SyncSnapshot SyncMode = iota
	// SyncResume: the receiver's table of the group is kept; the changes
	// after Seq follow as EventDelta.
	SyncResume
	// SyncPending: the sender has not published the group yet (it is
	// priming it); nothing follows, and its whole table comes in a
	// SyncSnapshot once it has.
	SyncPending
)

// Sync opens or closes a group's part of a peer's table of content: at
// connect, for every group, and later when the peer re-publishes a group
// whole (Node.Resync). Between an EventSync that begins a group and the
// one that ends it come that group's items (SyncSnapshot) or changes
// (SyncResume).
type Sync struct {
	Group string
	Mode  SyncMode
	// End closes the group's part (the snapshot is complete).
	End bool
	// Log names the sender's change log of the group: numbers of
	// different logs are unrelated (a restart starts a new one). 0: the
	// sender numbers no changes (an older version).
	Log uint64
	// Seq: a snapshot is as of this change; a resume sends the changes
	// after it.
	Seq uint64
	// Items is how many items a snapshot lists (a hint for sizing; 0 if
	// unknown).
	Items uint64
}

// Resume is what a node holds of one group of a peer's table of
// content: complete as of change Seq of log Log. A node dialling a peer
// sends them (Config.Resume) so that the peer sends only the changes
// since, when its change log still has them.
type Resume struct {
	Group string
	Log   uint64
	Seq   uint64
}

// Purge asks the nodes that receive it to drop cached content: one item,
// or every item under a prefix.
type Purge struct {
	// Group names the content tree.
	Group string
	// Path is the item's path ("/css/site.css"), or with Prefix the start
	// of the paths to drop ("/css/"). With Prefix it must not be empty:
	// Node.Purge refuses to send a purge of a whole group, and receivers
	// ignore one.
	Path string
	// Prefix: drop every item whose path starts with Path.
	Prefix bool
}

// GroupState is one of a node's content groups as it advertises it.
type GroupState struct {
	Name  string
	Ready bool // primed: the node's table of content for it is complete
}

// State is what a node advertises about itself besides readiness: which
// ring it uses and which content groups it has. Peering does not interpret
// it; it carries it in HELLO and STATE frames (Node.SetState) and reports
// it in PeerState.State and Events.
//
// Bounds (checkState): at most 256 groups, each name 1-1024 bytes, sorted
// by name with no duplicates, and at most about 60 KiB encoded (one frame
// with the rest of a HELLO).
type State struct {
	Epoch  uint64       // the ring epoch the node uses (opaque to peering)
	Groups []GroupState // sorted by name, no duplicates
}

// IsZero reports whether s is the zero State: epoch 0 and no groups.
func (s State) IsZero() bool { return s.Epoch == 0 && len(s.Groups) == 0 }

// Equal reports whether s and t are the same state.
func (s State) Equal(t State) bool {
	return s.Epoch == t.Epoch && slices.Equal(s.Groups, t.Groups)
}

// Clone returns a copy of s that shares no memory with it.
func (s State) Clone() State {
	s.Groups = slices.Clone(s.Groups)
	return s
}

// hello opens the control stream, from each side.
type hello struct {
	Name     string
	Ready    bool
	Observer bool // holds no content and is in no ring (a director)
	// Lan is where the sender's HTTP site is reached (host:port), "" if
	// not advertised. Optional on the wire: see appendHello.
	Lan string
	// State is the sender's State. Optional on the wire: see appendHello.
	State State
	// Resume: a RESUME frame follows (helloResume).
	Resume bool
}

const groupReady = 1 << 0

const (
	helloReady    = 1 << 0
	helloObserver = 1 << 1
	// helloResume: a RESUME frame follows the HELLO (dialer only).
	helloResume = 1 << 2
)

const purgePrefix = 1 << 0

func appendGet(b []byte, r *Request) ([]byte, error) {
	if err := errors.Join(checkLen(r.Group, maxFieldLen), checkLen(r.Path, maxPathLen),
		checkLen(r.Version, maxFieldLen), checkLen(r.Encoding, maxFieldLen)); err != nil {
		return b, err
	}
	b, start := beginFrame(b, frameGet)
	b = appendStr(b, r.Group)
	b = appendStr(b, r.Path)
	b = appendStr(b, r.Version)
	b = appendStr(b, r.Encoding)
	b = binary.AppendUvarint(b, r.Epoch)
	if r.Offset < 0 || r.Length < 0 || r.Length > maxContentSize || r.Offset > maxContentSize ||
		r.Length == 0 && r.Offset != 0 {
		return b[:start], errBadValue
	}
	if r.Length > 0 {
		b = binary.AppendUvarint(b, uint64(r.Offset))
		b = binary.AppendUvarint(b, uint64(r.Length))
	}
	return endFrame(b, start)
}

func decodeGet(p []byte) (Request, error) {
	r := newReader(p)
	req := Request{
		Group:    r.str(maxFieldLen),
		Path:     r.str(maxPathLen),
		Version:  r.str(maxFieldLen),
		Encoding: r.str(maxFieldLen),
		Epoch:    r.uvarint(),
	}
	if r.more() {
		req.Offset, req.Length = r.size(), r.size()
		if r.err == nil && req.Length == 0 {
			return req, errBadValue
		}
	}
	return req, r.done()
}

// appendResponse appends a RESPONSE frame: status, then (for success) the
// item's metadata without variants.
func appendResponse(b []byte, status quic.StreamErrorCode, m *Meta) ([]byte, error) {
	b, start := beginFrame(b, frameResponse)
	b = binary.AppendUvarint(b, uint64(status))
	if status == ErrCodeNoError {
		var err error
		if b, err = appendMeta(b, m, false); err != nil {
			return b[:start], err
		}
	}
	return endFrame(b, start)
}

func decodeResponse(p []byte) (quic.StreamErrorCode, Meta, error) {
	r := newReader(p)
	status := quic.StreamErrorCode(r.uvarint())
	var m Meta
	if r.err == nil && status == ErrCodeNoError {
		m = r.meta(false)
	}
	return status, m, r.done()
}

func appendMeta(b []byte, m *Meta, variants bool) ([]byte, error) {
	if err := errors.Join(checkLen(m.Path, maxPathLen), checkLen(m.Version, maxFieldLen),
		checkLen(m.ContentType, maxFieldLen), checkLen(m.ETag, maxFieldLen),
		checkLen(m.Encoding, maxFieldLen)); err != nil {
		return b, err
	}
	if m.Size < 0 || m.Size > maxContentSize {
		return b, errBadValue
	}
	b = appendStr(b, m.Path)
	b = appendStr(b, m.Version)
	b = binary.AppendUvarint(b, uint64(m.Size))
	b = appendStr(b, m.ContentType)
	b = binary.AppendVarint(b, unixNano(m.ModTime))
	b = appendStr(b, m.ETag)
	b = appendStr(b, m.Encoding)
	if !variants {
		return b, nil
	}
	if len(m.Variants) > maxVariants {
		return b, errBadValue
	}
	b = binary.AppendUvarint(b, uint64(len(m.Variants)))
	for i := range m.Variants {
		v := &m.Variants[i]
		if err := errors.Join(checkLen(v.Encoding, maxFieldLen), checkLen(v.ETag, maxFieldLen)); err != nil {
			return b, err
		}
		if v.Size < 0 || v.Size > maxContentSize {
			return b, errBadValue
		}
		b = appendStr(b, v.Encoding)
		b = binary.AppendUvarint(b, uint64(v.Size))
		b = appendStr(b, v.ETag)
	}
	return b, nil
}

func (r *reader) size() int64 {
	v := r.uvarint()
	if v > maxContentSize {
		r.fail(errBadValue)
		return 0
	}
	return int64(v)
}

func (r *reader) meta(variants bool) Meta {
	m := Meta{
		Path:        r.str(maxPathLen),
		Version:     r.str(maxFieldLen),
		Size:        r.size(),
		ContentType: r.str(maxFieldLen),
		ModTime:     fromUnixNano(r.varint()),
		ETag:        r.str(maxFieldLen),
		Encoding:    r.str(maxFieldLen),
	}
	if !variants {
		return m
	}
	n := r.uvarint()
	if n > maxVariants {
		r.fail(errBadValue)
	}
	if r.err != nil || n == 0 {
		return m
	}
	m.Variants = make([]Variant, n)
	for i := range m.Variants {
		m.Variants[i] = Variant{Encoding: r.str(maxFieldLen), Size: r.size(), ETag: r.str(maxFieldLen)}
	}
	return m
}

// appendHello appends a HELLO frame: name, flags, then the optional
// fields: Lan, then State. An optional field is appended only when it or
// a later one is set, so that a node that advertises nothing sends the
// HELLO of the first version of the protocol, and one without a State the
// HELLO of the version that added Lan.
func appendHello(b []byte, h *hello) ([]byte, error) {
	if err := errors.Join(checkLen(h.Name, maxFieldLen), checkLen(h.Lan, maxFieldLen), checkState(h.State)); err != nil {
		return b, err
	}
	b, start := beginFrame(b, frameHello)
	b = appendStr(b, h.Name)
	var flags byte
	if h.Ready {
		flags |= helloReady
	}
	if h.Observer {
		flags |= helloObserver
	}
	if h.Resume {
		flags |= helloResume
	}
	b = append(b, flags)
	if h.Lan != "" || !h.State.IsZero() {
		b = appendStr(b, h.Lan)
	}
	if !h.State.IsZero() {
		b = appendState(b, &h.State)
	}
	return endFrame(b, start)
}

// decodeHello decodes a HELLO. Unlike every other payload, a HELLO may
// carry fields after the ones this version knows: the fields after the flags
// are optional, later versions append theirs, and a receiver ignores what
// it does not know.
func decodeHello(p []byte) (hello, error) {
	r := newReader(p)
	h := hello{Name: r.str(maxFieldLen)}
	flags := r.byte()
	h.Ready = flags&helloReady != 0
	h.Observer = flags&helloObserver != 0
	h.Resume = flags&helloResume != 0
	if r.more() {
		h.Lan = r.str(maxFieldLen)
	}
	if r.more() {
		h.State = r.state()
	}
	if r.err != nil {
		return h, r.err
	}
	if h.Name == "" {
		return h, errBadValue
	}
	if h.Lan != "" && checkLan(h.Lan) != nil {
		return h, errBadValue
	}
	return h, nil
}

// checkLan validates an advertised LAN address: host:port, a non-empty
// host without spaces or control characters, a numeric port in 1-65535,
// at most maxFieldLen bytes.
func checkLan(s string) error {
	if len(s) > maxFieldLen {
		return fmt.Errorf("longer than %d bytes", maxFieldLen)
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	if host == "" {
		return errors.New("no host")
	}
	if strings.ContainsFunc(host, func(c rune) bool { return c <= ' ' || c == 0x7f }) {
		return errors.New("space or control character in host")
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("bad port %q", port)
	}
	return nil
}

// appendLan appends a LAN frame: the sender's advertised LAN address, ""
// when it stopped advertising one.
func appendLan(b []byte, lan string) ([]byte, error) {
	if lan != "" {
		if err := checkLan(lan); err != nil {
			return b, errBadValue
		}
	}
	b, start := beginFrame(b, frameLan)
	b = appendStr(b, lan)
	return endFrame(b, start)
}

// decodeLan decodes a LAN payload: one string, empty or a valid address
// (checkLan).
func decodeLan(p []byte) (string, error) {
	r := newReader(p)
	lan := r.str(maxFieldLen)
	if err := r.done(); err != nil {
		return "", err
	}
	if lan != "" && checkLan(lan) != nil {
		return "", errBadValue
	}
	return lan, nil
}

// Errors of a State that breaks its bounds. Decoders wrap them in
// errProtocol (see stateError).
var (
	errTooManyGroups = fmt.Errorf("more than %d groups", maxGroups)
	errGroupName     = fmt.Errorf("a group name empty or over %d bytes", maxFieldLen)
	errGroupOrder    = errors.New("groups not sorted by name, or a group listed twice")
	errStateTooLarge = fmt.Errorf("over %d bytes encoded", maxStateSize)
)

// stateError is the protocol error of a peer's State that breaks a bound.
func stateError(err error) error {
	return fmt.Errorf("%w: state: %w", errProtocol, err)
}

// checkState checks the bounds of a State: at most maxGroups groups, each
// name 1..maxFieldLen bytes, names strictly increasing (sorted, no
// duplicates), and at most maxStateSize bytes encoded.
func checkState(s State) error {
	if len(s.Groups) > maxGroups {
		return errTooManyGroups
	}
	size := binary.MaxVarintLen64 + 2
	for i, g := range s.Groups {
		if g.Name == "" || len(g.Name) > maxFieldLen {
			return errGroupName
		}
		if i > 0 && s.Groups[i-1].Name >= g.Name {
			return errGroupOrder
		}
		size += len(g.Name) + 3
	}
	if size > maxStateSize {
		return errStateTooLarge
	}
	return nil
}

// appendState appends a State (checked: see checkState): epoch, number of
// groups, then for each its name and flags (groupReady).
func appendState(b []byte, s *State) []byte {
	b = binary.AppendUvarint(b, s.Epoch)
	b = binary.AppendUvarint(b, uint64(len(s.Groups)))
	for _, g := range s.Groups {
		b = appendStr(b, g.Name)
		var flags byte
		if g.Ready {
			flags |= groupReady
		}
		b = append(b, flags)
	}
	return b
}

// state decodes a State and checks its bounds before allocating: the
// group count is refused before the slice is made. Flags a later version
// adds are ignored.
func (r *reader) state() State {
	var s State
	s.Epoch = r.uvarint()
	n := r.uvarint()
	if r.err != nil {
		return State{}
	}
	if n > maxGroups {
		r.fail(stateError(errTooManyGroups))
		return State{}
	}
	if n > uint64(len(r.s))/2 { // each group takes at least 2 bytes
		r.fail(errShortPayload)
		return State{}
	}
	if n > 0 {
		s.Groups = make([]GroupState, n)
	}
	for i := range s.Groups {
		name := r.str(maxFieldLen)
		flags := r.byte()
		if r.err != nil {
			if errors.Is(r.err, errFieldTooLong) {
				r.err = stateError(errGroupName)
			}
			return State{}
		}
		s.Groups[i] = GroupState{Name: name, Ready: flags&groupReady != 0}
	}
	if err := checkState(s); err != nil {
		r.fail(stateError(err))
		return State{}
	}
	return s
}

// appendStateFrame appends a STATE frame carrying s.
func appendStateFrame(b []byte, s *State) ([]byte, error) {
	if err := checkState(*s); err != nil {
		return b, err
	}
	b, start := beginFrame(b, frameState)
	b = appendState(b, s)
	return endFrame(b, start)
}

// decodeState decodes a STATE payload: a State, then fields of later
// versions, which are ignored.
func decodeState(p []byte) (State, error) {
	r := newReader(p)
	s := r.state()
	return s, r.err
}

// appendPurge appends a PURGE frame: group, path, flags.
func appendPurge(b []byte, p *Purge) ([]byte, error) {
	if err := errors.Join(checkLen(p.Group, maxFieldLen), checkLen(p.Path, maxPathLen)); err != nil {
		return b, err
	}
	b, start := beginFrame(b, framePurge)
	b = appendStr(b, p.Group)
	b = appendStr(b, p.Path)
	var flags byte
	if p.Prefix {
		flags |= purgePrefix
	}
	b = append(b, flags)
	return endFrame(b, start)
}

func decodePurge(b []byte) (Purge, error) {
	r := newReader(b)
	p := Purge{Group: r.str(maxFieldLen), Path: r.str(maxPathLen)}
	flags := r.byte()
	if err := r.done(); err != nil {
		return Purge{}, err
	}
	if flags&^purgePrefix != 0 {
		return Purge{}, errBadValue
	}
	p.Prefix = flags&purgePrefix != 0
	return p, nil
}

func appendReady(b []byte, ready bool) []byte {
	b, start := beginFrame(b, frameReady)
	b = appendBool(b, ready)
	b, _ = endFrame(b, start) // one byte always fits
	return b
}

func decodeReady(p []byte) (bool, error) {
	r := newReader(p)
	v := r.byte()
	if err := r.done(); err != nil {
		return false, err
	}
	if v > 1 {
		return false, errBadValue
	}
	return v == 1, nil
}

func appendTOCEnd(b []byte) []byte {
	b, start := beginFrame(b, frameTOCEnd)
	b, _ = endFrame(b, start)
	return b
}

// appendItems appends items of group as frames of type t (frameTOC or
// frameUpsert), as many items per frame as fit in MaxFrameSize. An item that
// cannot be encoded (a field over its limit) is skipped and counted.
func appendItems(b []byte, t frameType, group string, items []Meta) (_ []byte, skipped int, _ error) {
	if err := checkLen(group, maxFieldLen); err != nil {
		return b, len(items), err
	}
	var start, count int
	open := false
	for i := range items {
		if !open {
			b, start = beginFrame(b, t)
			b = appendStr(b, group)
			open, count = true, 0
		}
		mark := len(b)
		nb, err := appendMeta(b, &items[i], true)
		if err != nil {
			b = nb[:mark]
			skipped++
			continue
		}
		b = nb
		if len(b)-start-frameHeaderSize > MaxFrameSize {
			if count == 0 { // cannot happen with the field limits; be safe
				b = b[:mark]
				skipped++
				continue
			}
			// Move this item to a fresh frame.
			item := append([]byte(nil), b[mark:]...)
			b, _ = endFrame(b[:mark], start)
			b, start = beginFrame(b, t)
			b = appendStr(b, group)
			b = append(b, item...)
			count = 1
			continue
		}
		count++
	}
	if open {
		b, _ = endFrame(b, start)
	}
	return b, skipped, nil
}

// decodeItems decodes a TOC or UPSERT payload: the group, then items until
// the payload ends.
func decodeItems(p []byte) (string, []Meta, error) {
	r := newReader(p)
	group := r.str(maxFieldLen)
	var items []Meta
	for r.more() {
		items = append(items, r.meta(true))
	}
	if r.err != nil {
		return "", nil, r.err
	}
	return group, items, nil
}

// appendDeletes appends DELETE frames for paths of group.
func appendDeletes(b []byte, group string, paths []string) (_ []byte, skipped int, _ error) {
	if err := checkLen(group, maxFieldLen); err != nil {
		return b, len(paths), err
	}
	var start int
	open := false
	for _, p := range paths {
		if len(p) > maxPathLen {
			skipped++
			continue
		}
		if open && len(b)-start-frameHeaderSize+len(p)+10 > MaxFrameSize {
			b, _ = endFrame(b, start)
			open = false
		}
		if !open {
			b, start = beginFrame(b, frameDelete)
			b = appendStr(b, group)
			open = true
		}
		b = appendStr(b, p)
	}
	if open {
		b, _ = endFrame(b, start)
	}
	return b, skipped, nil
}

func decodeDeletes(p []byte) (string, []string, error) {
	r := newReader(p)
	group := r.str(maxFieldLen)
	var paths []string
	for r.more() {
		paths = append(paths, r.str(maxPathLen))
	}
	if r.err != nil {
		return "", nil, r.err
	}
	return group, paths, nil
}

// unixNano encodes t; the zero Time is 0 (UnixNano of the zero Time is not
// representable).
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// SYNC flags.
const (
	syncResume  = 1 << 0
	syncPending = 1 << 1
	syncEnd     = 1 << 2
)

// appendSync appends a SYNC frame: group, flags, log, seq, items. A
// receiver ignores fields after those it knows.
func appendSync(b []byte, s *Sync) ([]byte, error) {
	if err := checkLen(s.Group, maxFieldLen); err != nil {
		return b, err
	}
	b, start := beginFrame(b, frameSync)
	b = appendStr(b, s.Group)
	var flags byte
	switch s.Mode {
	case SyncResume:
		flags |= syncResume
	case SyncPending:
		flags |= syncPending
	}
	if s.End {
		flags |= syncEnd
	}
	b = append(b, flags)
	b = binary.AppendUvarint(b, s.Log)
	b = binary.AppendUvarint(b, s.Seq)
	b = binary.AppendUvarint(b, s.Items)
	return endFrame(b, start)
}

func decodeSync(p []byte) (Sync, error) {
	r := newReader(p)
	s := Sync{Group: r.str(maxFieldLen)}
	flags := r.byte()
	s.Log, s.Seq, s.Items = r.uvarint(), r.uvarint(), r.uvarint()
	if r.err != nil {
		return Sync{}, r.err
	}
	switch {
	case flags&syncResume != 0 && flags&syncPending != 0:
		return Sync{}, errBadValue
	case flags&syncResume != 0:
		s.Mode = SyncResume
	case flags&syncPending != 0:
		s.Mode = SyncPending
	}
	s.End = flags&syncEnd != 0
	return s, nil
}

// appendSeq appends a SEQ frame: the group and the number of the change
// whose UPSERT and DELETE frames follow. A receiver ignores fields after
// those it knows.
func appendSeq(b []byte, group string, seq uint64) ([]byte, error) {
	if err := checkLen(group, maxFieldLen); err != nil {
		return b, err
	}
	b, start := beginFrame(b, frameSeq)
	b = appendStr(b, group)
	b = binary.AppendUvarint(b, seq)
	return endFrame(b, start)
}

func decodeSeq(p []byte) (string, uint64, error) {
	r := newReader(p)
	g := r.str(maxFieldLen)
	seq := r.uvarint()
	return g, seq, r.err
}

// maxResumes bounds the entries of a RESUME frame (one per group).
const maxResumes = maxGroups

// appendResume appends a RESUME frame: a count, then group, log and seq
// of each entry. Entries that do not fit in one frame are left out: the
// peer then sends those groups whole.
func appendResume(b []byte, rs []Resume) []byte {
	b, start := beginFrame(b, frameResume)
	countAt := len(b)
	b = append(b, 0, 0) // count: a two-byte uvarint, filled in below
	n := 0
	for _, r := range rs {
		if n == maxResumes || r.Group == "" || len(r.Group) > maxFieldLen ||
			len(b)-start-frameHeaderSize+len(r.Group)+3*binary.MaxVarintLen64 > MaxFrameSize {
			continue
		}
		b = appendStr(b, r.Group)
		b = binary.AppendUvarint(b, r.Log)
		b = binary.AppendUvarint(b, r.Seq)
		n++
	}
	b[countAt], b[countAt+1] = byte(n&0x7f)|0x80, byte(n>>7)
	b, _ = endFrame(b, start) // fits: checked per entry
	return b
}

func decodeResume(p []byte) ([]Resume, error) {
	r := newReader(p)
	n := r.uvarint()
	if r.err != nil {
		return nil, r.err
	}
	if n > maxResumes {
		return nil, errBadValue
	}
	out := make([]Resume, 0, n)
	for range n {
		out = append(out, Resume{Group: r.str(maxFieldLen), Log: r.uvarint(), Seq: r.uvarint()})
	}
	if err := r.done(); err != nil {
		return nil, err
	}
	for _, rs := range out {
		if rs.Group == "" {
			return nil, errBadValue
		}
	}
	return out, nil
}

// appendMetaGet appends a META frame: group, path, epoch. The server
// answers a RESPONSE frame whose Meta carries the variants, and no body.
func appendMetaGet(b []byte, r *Request) ([]byte, error) {
	if err := errors.Join(checkLen(r.Group, maxFieldLen), checkLen(r.Path, maxPathLen)); err != nil {
		return b, err
	}
	b, start := beginFrame(b, frameMeta)
	b = appendStr(b, r.Group)
	b = appendStr(b, r.Path)
	b = binary.AppendUvarint(b, r.Epoch)
	return endFrame(b, start)
}

func decodeMetaGet(p []byte) (Request, error) {
	r := newReader(p)
	req := Request{Group: r.str(maxFieldLen), Path: r.str(maxPathLen), Epoch: r.uvarint(), MetaOnly: true}
	return req, r.done()
}

// appendMetaResponse appends the RESPONSE to a META request: status,
// then (for success) the item's metadata with its variants.
func appendMetaResponse(b []byte, status quic.StreamErrorCode, m *Meta) ([]byte, error) {
	b, start := beginFrame(b, frameResponse)
	b = binary.AppendUvarint(b, uint64(status))
	if status == ErrCodeNoError {
		var err error
		if b, err = appendMeta(b, m, true); err != nil {
			return b[:start], err
		}
	}
	return endFrame(b, start)
}

func decodeMetaResponse(p []byte) (quic.StreamErrorCode, Meta, error) {
	r := newReader(p)
	status := quic.StreamErrorCode(r.uvarint())
	var m Meta
	if r.err == nil && status == ErrCodeNoError {
		m = r.meta(true)
	}
	return status, m, r.done()
}
