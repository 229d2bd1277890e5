package peering

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/quic-go/quic-go"
)

// ALPN is the TLS application protocol of peer traffic. Both sides set it;
// a handshake that does not negotiate it fails.
const ALPN = "shardcache/1"

// Wire format
//
// Every message is one frame:
//
//	+---------+------+----------------+-------------------+
//	| version | type | length (4, BE) | payload (length)  |
//	+---------+------+----------------+-------------------+
//
// version is protocolVersion, type a frameType, and length at most
// MaxFrameSize. Payload fields are uvarint (unsigned), varint (signed), one
// byte (flags), or a string: uvarint length then bytes. A frame's payload is
// fully consumed by its message; trailing bytes are an error.
//
// A fetch is one bidirectional stream: the client sends one GET frame and
// closes its side; the server answers one RESPONSE frame and, if the status
// is ErrCodeNoError, exactly Size body bytes unframed, then closes. The body
// is not framed: QUIC already delimits and flow-controls the stream, and
// sending the body as-is lets both sides move it without copying.
//
// The control stream is the first stream a dialer opens on its connection:
// it sends HELLO, the acceptor answers HELLO, then the acceptor sends its
// table of content as TOC frames closed by TOC_END, then UPSERT, DELETE and
// READY frames as things change, for as long as the connection lives.
// PURGE frames go both ways on it after the HELLOs: the dialer may send
// them to the acceptor (the only frames it sends after its HELLO; this is
// how an observer, which nobody dials, reaches the nodes), and the acceptor
// to the dialer. LAN frames go from the acceptor to the dialer, at any time
// after the HELLOs (even within the snapshot): the acceptor's advertised
// LAN address changed (Node.SetLan), and replaces the one of its HELLO. A
// receiver ignores control frames of types it does not know, so later
// versions can add messages (a node that predates LAN keeps the address of
// the HELLO until it re-dials).
//
// GET is group, path, version, encoding, epoch, then, for a byte range
// only, offset and length (uvarints; length > 0). The RESPONSE's Size is the
// number of body bytes that follow: the whole body, or the range (shorter
// when the body ends first).
//
// STATE frames go from the acceptor to the dialer, like LAN frames: the
// acceptor's State changed (Node.SetState), and replaces the one of its
// HELLO.
//
// HELLO is name, flags, then optional fields: Lan (a string), then the
// sender's State (see appendState), each sent only when it or a later one
// is set (Lan empty if need be). A version that adds a field after the
// State must send the State, zero if need be, and a receiver ignores fields
// past those it knows. A receiver ignores flags it does not know. A STATE
// payload is a State, and may likewise carry fields after it that a
// receiver ignores; so may SYNC and SEQ payloads. Every other payload must
// be consumed exactly.
//
// Streamed, resumable tables of content (added after the first version;
// every frame and flag below is one an older node ignores, so mixed
// versions still work, with a whole snapshot at every connect):
//
//   - The acceptor numbers the changes of each group it publishes (1, 2,
//     …) in a change log named by a random Log id (a new one when the node
//     restarts or re-publishes the group whole), and keeps the latest
//     changes' frames (maxLogBytes per group). Each change's UPSERT and
//     DELETE frames are preceded by a SEQ frame (group, number).
//   - A dialer that holds complete tables of the acceptor sets the
//     helloResume flag and sends one RESUME frame right after its HELLO:
//     per group, the Log id and the last number it applied.
//   - At connect the acceptor sends, per group, a SYNC frame beginning it
//     (flags: resume, pending; then Log, Seq, and the item count of a
//     snapshot), then either the snapshot as TOC frames (as of Seq), or,
//     when the log still holds every change after the dialer's number, the
//     SEQ, UPSERT and DELETE frames of those changes (resume), or nothing
//     (pending: not published yet, the group is priming); then a SYNC
//     frame with the end flag. TOC_END follows the last group, as before.
//     A group the dialer knew that is not listed is gone.
//   - When a group is published whole later (it finished priming, or its
//     store changed: Node.Resync), the acceptor sends every dialer a SYNC
//     begin, the snapshot as UPSERT frames (which an older dialer applies
//     as changes), and a SYNC end, in order with its other frames.
//   - The snapshot is encoded from the backend's table as it is walked,
//     in frames of at most MaxFrameSize written about tocBatch bytes at a
//     time: never the whole table in memory on either side.
//
// META (client → server, on a stream of its own like GET): group, path,
// epoch. The answer is one RESPONSE frame whose Meta carries the item's
// variants, and no body. A server that predates it resets the stream
// (ErrCodeBadRequest); the client then does without.
const (
	protocolVersion = 1

	// frameHeaderSize is version + type + length.
	frameHeaderSize = 6

	// MaxFrameSize bounds a frame's payload. Decoders refuse larger frames
	// before allocating anything.
	MaxFrameSize = 64 << 10

	// Field limits, so that one item always fits in a frame.
	maxPathLen     = 4096
	maxFieldLen    = 1024
	maxVariants    = 8
	maxContentSize = 1 << 62

	// maxGroups bounds the groups of a State. A node serves a handful of
	// sites; 256 leaves room for many more while bounding what a peer's
	// HELLO or STATE frame makes us allocate and hand to the cluster layer.
	maxGroups = 256
	// maxStateSize bounds an encoded State, so that a HELLO with a name
	// and a LAN address at their limits (2 × 1026 bytes) and the flags
	// still fits in a frame. 256 groups of 1024-byte names would not: such
	// a State is refused by SetState and Listen.
	maxStateSize = MaxFrameSize - 4096
)

type frameType byte

const (
	frameGet      frameType = 1  // client → server: Request
	frameResponse frameType = 2  // server → client: status + Meta, then the body
	frameHello    frameType = 3  // both ways, first on the control stream
	frameReady    frameType = 4  // acceptor → dialer: ready state changed
	frameTOC      frameType = 5  // acceptor → dialer: part of the snapshot
	frameTOCEnd   frameType = 6  // acceptor → dialer: snapshot complete
	frameUpsert   frameType = 7  // acceptor → dialer: items added or changed
	frameDelete   frameType = 8  // acceptor → dialer: items removed
	framePurge    frameType = 9  // both ways, after HELLO: drop cached content
	frameLan      frameType = 10 // acceptor → dialer, after HELLO: advertised LAN address changed
	frameState    frameType = 11 // acceptor → dialer, after HELLO: ring epoch or groups changed
	frameSync     frameType = 12 // acceptor → dialer: a group's table of content begins or ends
	frameSeq      frameType = 13 // acceptor → dialer: the change number of the UPSERT/DELETE frames that follow
	frameResume   frameType = 14 // dialer → acceptor, right after HELLO: what it holds of the acceptor's tables
	frameMeta     frameType = 15 // client → server: one item's metadata with its variants, no body
	// 16-19 are taken by PUSH (push.go).
)

// Stream error codes: the status of a RESPONSE and the code of a stream
// reset (CancelRead / CancelWrite) share this space.
const (
	// ErrCodeNoError is the status of a successful response.
	ErrCodeNoError quic.StreamErrorCode = 0
	// ErrCodeNotFound: the server holds no item for the requested group and
	// path (or not at the requested version).
	ErrCodeNotFound quic.StreamErrorCode = 1
	// ErrCodeBadRequest: a malformed or unexpected frame.
	ErrCodeBadRequest quic.StreamErrorCode = 2
	// ErrCodeInternal: the server failed to produce the item.
	ErrCodeInternal quic.StreamErrorCode = 3
	// ErrCodeTooLarge: the body is larger than the client accepts.
	ErrCodeTooLarge quic.StreamErrorCode = 4
	// ErrCodeCanceled: the client gave up (its context ended).
	ErrCodeCanceled quic.StreamErrorCode = 5
	// ErrCodeTimeout: the server's per-stream deadline passed.
	ErrCodeTimeout quic.StreamErrorCode = 6
	// ErrCodeUnavailable: the server cannot answer now (shutting down, or
	// no backend).
	ErrCodeUnavailable quic.StreamErrorCode = 7
)

// Connection error codes, sent with CONNECTION_CLOSE.
const (
	// CloseShutdown: the node is closing.
	CloseShutdown quic.ApplicationErrorCode = 0x100
	// CloseProtocolError: the peer broke the protocol on the control stream.
	CloseProtocolError quic.ApplicationErrorCode = 0x101
	// CloseBadIdentity: the name in HELLO is not one its certificate holds,
	// or not the peer that was dialled.
	CloseBadIdentity quic.ApplicationErrorCode = 0x102
	// CloseTooSlow: the peer did not read its control stream and the
	// updates queued for it exceeded the limit; it re-dials and gets a
	// fresh snapshot.
	CloseTooSlow quic.ApplicationErrorCode = 0x103
	// CloseGone: the connection died (the peer stopped answering); used
	// when cleaning up locally.
	CloseGone quic.ApplicationErrorCode = 0x104
	// CloseRemoved: the dialer closed its connection because the acceptor
	// is no longer one of its configured peers, or moved to another
	// address (Node.SetPeers). The acceptor only loses a subscriber; a
	// connection it dialled itself is not affected.
	CloseRemoved quic.ApplicationErrorCode = 0x105
	// CloseTooManyConns: the acceptor already holds maxConnsPerName
	// connections from peers with this certificate name.
	CloseTooManyConns quic.ApplicationErrorCode = 0x106
	// CloseDuplicate: the dialer reached the acceptor at an address it
	// lists without a name, and the name in the acceptor's HELLO is the
	// dialer's own, a configured peer's, or one a live connection to
	// another such address already carries: the dialer does not track a
	// node twice (see EventNamed).
	CloseDuplicate quic.ApplicationErrorCode = 0x107
)

// Error is a protocol-level failure with its wire code. Backends return the
// sentinels below (or wrap them) to choose the status of a response.
type Error struct {
	Code quic.StreamErrorCode
	Msg  string
}

// Error implements error.
func (e *Error) Error() string {
	if e.Msg != "" {
		return "peering: " + e.Msg
	}
	return fmt.Sprintf("peering: error code %d", e.Code)
}

// Is reports whether target is an *Error with the same code, so that
// errors.Is(err, ErrNotFound) holds for any not-found error.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Sentinel errors, one per code.
var (
	ErrNotFound    = &Error{ErrCodeNotFound, "not found"}
	ErrBadRequest  = &Error{ErrCodeBadRequest, "bad request"}
	ErrInternal    = &Error{ErrCodeInternal, "internal error"}
	ErrTooLarge    = &Error{ErrCodeTooLarge, "body too large"}
	ErrCanceled    = &Error{ErrCodeCanceled, "canceled"}
	ErrTimeout     = &Error{ErrCodeTimeout, "timeout"}
	ErrUnavailable = &Error{ErrCodeUnavailable, "unavailable"}
)

// codeError returns the sentinel for code (a fresh *Error for unknown codes).
func codeError(code quic.StreamErrorCode) error {
	for _, e := range []*Error{ErrNotFound, ErrBadRequest, ErrInternal, ErrTooLarge, ErrCanceled, ErrTimeout, ErrUnavailable} {
		if e.Code == code {
			return e
		}
	}
	return &Error{Code: code}
}

// errorCode maps an error from a Backend to a status.
func errorCode(err error) quic.StreamErrorCode {
	var pe *Error
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ErrCodeInternal
}

// errProtocol is wrapped by every decoding error: the peer broke the
// protocol.
var errProtocol = errors.New("peering: protocol error")

var (
	errFrameTooLarge = fmt.Errorf("%w: frame too large", errProtocol)
	errBadVersion    = fmt.Errorf("%w: unsupported protocol version", errProtocol)
	errShortPayload  = fmt.Errorf("%w: truncated payload", errProtocol)
	errTrailingBytes = fmt.Errorf("%w: trailing bytes in payload", errProtocol)
	errFieldTooLong  = fmt.Errorf("%w: field too long", errProtocol)
	errBadValue      = fmt.Errorf("%w: value out of range", errProtocol)
	errUnexpected    = fmt.Errorf("%w: unexpected frame type", errProtocol)
)

// finTail is how many final bytes writeFin queues without blocking: at most
// one packet's worth, so quic-go keeps them in a pooled frame.
const finTail = 1024

// writeFin writes b and closes the send side of str so that the FIN rides in
// the packet that carries b's last bytes. Write then Close would send the
// FIN in a packet of its own: quic-go's Write returns only after the send
// loop has taken all the data, so a small request or response would cost
// two packets instead of one. TryWriteAll queues the tail without waiting,
// and the Close that follows lands before the send loop wakes up.
func writeFin(str *quic.Stream, b []byte) error {
	if len(b) > 4*finTail {
		if _, err := str.Write(b[:len(b)-finTail]); err != nil {
			return err
		}
		b = b[len(b)-finTail:]
	}
	if err := str.TryWriteAll(b); err != nil {
		if !errors.Is(err, quic.ErrWouldBlock) {
			return err
		}
		if _, err := str.Write(b); err != nil { // no flow-control credit: wait
			return err
		}
	}
	return str.Close()
}

// readFrame reads one frame from r. The payload is read into buf when it is
// large enough, else into a new slice of exactly the frame's length (never
// more than MaxFrameSize).
func readFrame(r io.Reader, buf []byte) (frameType, []byte, error) {
	var h [frameHeaderSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	if h[0] != protocolVersion {
		return 0, nil, errBadVersion
	}
	n := binary.BigEndian.Uint32(h[2:])
	if n > MaxFrameSize {
		return 0, nil, errFrameTooLarge
	}
	if int(n) > cap(buf) {
		buf = make([]byte, n)
	}
	p := buf[:n]
	if _, err := io.ReadFull(r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return frameType(h[1]), p, nil
}

// readHead reads the first frame of a stream into buf, with as few Read
// calls as possible: each Read takes whatever has arrived, so a small
// response usually comes in one call with its body and its end. It returns
// the frame, the bytes read past it (rest, aliasing buf or its
// replacement) and whether the stream's end was reached. buf is replaced by
// a larger slice when the frame does not fit (never more than MaxFrameSize
// plus the header).
func readHead(r io.Reader, buf []byte) (t frameType, payload, rest []byte, eof bool, err error) {
	if len(buf) < frameHeaderSize {
		buf = make([]byte, 512)
	}
	n := 0
	need := frameHeaderSize
	for n < need {
		if eof {
			if n == 0 {
				return 0, nil, nil, true, io.EOF
			}
			return 0, nil, nil, true, io.ErrUnexpectedEOF
		}
		k, err := r.Read(buf[n:])
		n += k
		if err == io.EOF {
			eof = true
		} else if err != nil {
			return 0, nil, nil, false, err
		}
		if need == frameHeaderSize && n >= frameHeaderSize {
			if buf[0] != protocolVersion {
				return 0, nil, nil, eof, errBadVersion
			}
			l := binary.BigEndian.Uint32(buf[2:])
			if l > MaxFrameSize {
				return 0, nil, nil, eof, errFrameTooLarge
			}
			need = frameHeaderSize + int(l)
			if need > len(buf) {
				nb := make([]byte, need)
				copy(nb, buf[:n])
				buf = nb
			}
		}
	}
	return frameType(buf[1]), buf[frameHeaderSize:need], buf[need:n], eof, nil
}

// readEOF reads the end of a stream that must carry nothing more.
func readEOF(r io.Reader) error {
	var one [1]byte
	k, err := r.Read(one[:])
	if k == 0 && err == io.EOF {
		return nil
	}
	if err == nil || err == io.EOF {
		err = errTrailingBytes
	}
	return err
}

// splitFrame parses one frame at the start of b and returns its type,
// payload (aliasing b) and total length.
func splitFrame(b []byte) (frameType, []byte, int, error) {
	if len(b) < frameHeaderSize {
		return 0, nil, 0, errShortPayload
	}
	if b[0] != protocolVersion {
		return 0, nil, 0, errBadVersion
	}
	n := binary.BigEndian.Uint32(b[2:])
	if n > MaxFrameSize {
		return 0, nil, 0, errFrameTooLarge
	}
	end := frameHeaderSize + int(n)
	if len(b) < end {
		return 0, nil, 0, errShortPayload
	}
	return frameType(b[1]), b[frameHeaderSize:end], end, nil
}

// beginFrame appends a frame header with a zero length; endFrame fills in
// the length of everything appended since.
func beginFrame(b []byte, t frameType) ([]byte, int) {
	start := len(b)
	return append(b, protocolVersion, byte(t), 0, 0, 0, 0), start
}

func endFrame(b []byte, start int) ([]byte, error) {
	n := len(b) - start - frameHeaderSize
	if n > MaxFrameSize {
		return b[:start], errFrameTooLarge
	}
	binary.BigEndian.PutUint32(b[start+2:], uint32(n))
	return b, nil
}

// reader decodes payload fields. It copies the payload into one string
// up front and slices every string field out of it: one allocation per
// frame instead of one per field (the fields keep the frame's bytes alive,
// which are mostly those fields anyway). The first error sticks and every
// later read returns zero values, so decoders check once at the end.
type reader struct {
	s   string
	err error
}

func newReader(p []byte) reader { return reader{s: string(p)} }

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
	r.s = ""
}

// uvarint decodes like binary.Uvarint: at most 10 bytes, no overflow.
func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	var x uint64
	var shift uint
	for i := 0; i < len(r.s) && i < binary.MaxVarintLen64; i++ {
		c := r.s[i]
		if c < 0x80 {
			if i == binary.MaxVarintLen64-1 && c > 1 {
				break // overflow
			}
			r.s = r.s[i+1:]
			return x | uint64(c)<<shift
		}
		x |= uint64(c&0x7f) << shift
		shift += 7
	}
	r.fail(errShortPayload)
	return 0
}

func (r *reader) varint() int64 {
	ux := r.uvarint()
	x := int64(ux >> 1)
	if ux&1 != 0 {
		x = ^x
	}
	return x
}

func (r *reader) byte() byte {
	if r.err != nil {
		return 0
	}
	if len(r.s) == 0 {
		r.fail(errShortPayload)
		return 0
	}
	c := r.s[0]
	r.s = r.s[1:]
	return c
}

func (r *reader) str(limit int) string {
	n := r.uvarint()
	if r.err != nil {
		return ""
	}
	if n > uint64(limit) {
		r.fail(errFieldTooLong)
		return ""
	}
	if n > uint64(len(r.s)) {
		r.fail(errShortPayload)
		return ""
	}
	v := r.s[:n]
	r.s = r.s[n:]
	return v
}

func (r *reader) more() bool { return r.err == nil && len(r.s) > 0 }

func (r *reader) done() error {
	if r.err == nil && len(r.s) != 0 {
		r.err = errTrailingBytes
	}
	return r.err
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

func checkLen(s string, limit int) error {
	if len(s) > limit {
		return errFieldTooLong
	}
	return nil
}
