package shardcache

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/shardcache/caddy-shardcache/cluster"
	"github.com/shardcache/caddy-shardcache/shard"
)

// The HTTP semantics of a response, whatever tier its bytes come from:
// headers, preconditions (evaluated once, before any byte is fetched),
// Range, HEAD, and writing the body.

// response is one response being written: the item's header values in
// the chosen encoding, and what the preconditions decided.
type response struct {
	it  *shard.Item
	enc string
	hv  itemHeaders

	// status is 304 or 412 when the preconditions answer the request with
	// no body, else 0.
	status int
	// rangeHdr is the Range header the response honours: "" when there is
	// none, or an If-Range does not match.
	rangeHdr string
	// override is the status of the error being handled when the handler
	// serves an error page, else 0.
	override int
	// ownEtag, ownType: prepare set the ETag, the Content-Type.
	ownEtag, ownType bool
}

// undo removes the headers prepare set, for a response that turns out to
// be an error (no bytes could be had): the error's own response must not
// carry the item's length or validators.
func (resp *response) undo(hdr http.Header) {
	for _, k := range [...]string{"Content-Length", "Accept-Ranges", "Last-Modified", "Content-Encoding"} {
		delete(hdr, k)
	}
	if resp.ownEtag {
		delete(hdr, "Etag")
	}
	if resp.ownType {
		delete(hdr, "Content-Type")
	}
}

// prepare sets the item's headers on w and evaluates the request's
// preconditions, into resp.
func prepare(resp *response, w http.ResponseWriter, r *http.Request, it *shard.Item, enc string) {
	hdr := w.Header()
	// The values are the item's own strings, but each response gets its
	// own slices: the header directive's replace operations modify header
	// values in place.
	vals, text := headerVals()
	hv := headersOf(it, enc, text)
	own := func(i int, v string) []string {
		vals[i] = v
		return vals[i : i+1 : i+1]
	}
	// file_server always adds this to file responses, compressed or not, so
	// that caches key on it.
	if v, set := hdr["Vary"]; set {
		hdr["Vary"] = append(v, "Accept-Encoding")
	} else {
		hdr["Vary"] = own(5, "Accept-Encoding")
	}
	if enc != "" {
		hdr["Content-Encoding"] = own(0, enc)
	} else {
		delete(hdr, "Content-Encoding")
	}
	// Let an ETag or Content-Type set by an earlier handler win, as
	// file_server does.
	_, haveEtag := hdr["Etag"]
	if !haveEtag && hv.etag != "" { // "": an item from elsewhere without one
		hdr["Etag"] = own(1, hv.etag)
	}
	_, haveType := hdr["Content-Type"]
	if !haveType {
		if hv.contentType != "" {
			hdr["Content-Type"] = own(2, hv.contentType)
		} else {
			hdr["Content-Type"] = nil // never let net/http sniff
		}
	}
	*resp = response{it: it, enc: enc, hv: hv, override: errorStatus(r), ownEtag: !haveEtag, ownType: !haveType}
	if plainRequest(r) {
		hdr["Accept-Ranges"] = own(3, "bytes")
		if hv.lastModified != "" {
			hdr["Last-Modified"] = own(4, hv.lastModified)
		}
		hdr["Content-Length"] = own(6, hv.contentLength)
		return
	}
	if resp.override == 0 {
		resp.status, resp.rangeHdr = checkPreconditions(hdr, r, hv.modTime)
	} else {
		resp.rangeHdr = r.Header.Get("Range")
	}
}

// needsBody reports whether the response sends bytes: not for HEAD, nor
// when the preconditions answered.
func (resp *response) needsBody(r *http.Request) bool {
	return resp.status == 0 && r.Method != http.MethodHead
}

// write sends the response: its status and headers and, unless the
// request needs none, b's bytes (b.Data, b.Chunks, b.Remote or b.File).
// b is the zero Body when no bytes are needed. A response never promises
// bytes it does not send: its status and length come from the same
// decision that fetched (or did not fetch) its body.
func (h *Handler) write(w http.ResponseWriter, r *http.Request, resp *response, b cluster.Body, name string) error {
	hdr := w.Header()
	hv := resp.hv
	if resp.status != 0 {
		if resp.status == http.StatusNotModified {
			writeNotModified(hdr, hv)
		} else if hv.lastModified != "" {
			hdr["Last-Modified"] = []string{hv.lastModified}
		}
		w.WriteHeader(resp.status)
		return nil
	}
	if b.Item != nil && b.Item != resp.it {
		// Storage had a newer version than the table of content: send its
		// headers, with its own length.
		resp = prepareAgain(w, r, b.Item, b.Enc)
		hv = resp.hv
		if resp.status != 0 {
			return h.write(w, r, resp, cluster.Body{}, name)
		}
	}

	// The fast path: a plain GET or HEAD goes out in one write, with no
	// parsing of conditional or Range headers, and no allocation: the
	// header values are the item's own.
	if b.File == nil && resp.override == 0 && plainRequest(r) &&
		(b.Data != nil || b.Chunks != nil || b.Remote != nil || hv.size == 0 || r.Method == http.MethodHead) {
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodHead {
			return nil
		}
		switch {
		case b.Chunks != nil:
			for _, c := range b.Chunks {
				if writeBody(w, r, c) != nil {
					break
				}
			}
		case b.Remote != nil:
			_, _ = b.Remote.WriteTo(w)
			if err := b.Remote.Err(); err != nil {
				h.cutShort(resp.it, err)
			}
		default:
			_ = writeBody(w, r, b.Data)
		}
		return nil
	}
	if resp.enc != "" && resp.rangeHdr == "" {
		// net/http does not set Content-Length when Content-Encoding is
		// set (caddyserver/caddy#7040); file_server sets it too.
		hdr["Content-Length"] = []string{hv.contentLength}
	}
	var content io.ReadSeeker
	switch {
	case b.File != nil:
		content = b.File
	case b.Chunks != nil:
		content = shard.NewChunksReader(b.Chunks)
	case b.Remote != nil:
		content = b.Remote
	case b.Data != nil || hv.size == 0:
		content = bytes.NewReader(b.Data)
	default:
		content = noBody(hv.size) // HEAD: never read
	}
	http.ServeContent(overrideStatus(w, resp.override), r, name, hv.modTime, content)
	if b.Remote != nil {
		if err := b.Remote.Err(); err != nil {
			h.cutShort(resp.it, err)
		}
	}
	return nil
}

// sendfileMin is the smallest body sent with sendfile(2) from its arena
// rather than written from memory. Off by default: measured on loopback
// behind Caddy's default write idle timeout (bench/README.md), sendfile
// was 0.5–0.6× as fast as a write from the arena for 128 KiB to 4 MiB
// bodies (the extra system calls and 64 KiB rounds cost more than the copy
// they save), so there was no crossover to choose. SHARDCACHE_SENDFILE_MIN
// (bytes; "off") in the environment turns it on from that size, for NICs
// where the copy costs more, and for such measurements.
var sendfileMin = func() int {
	v := os.Getenv("SHARDCACHE_SENDFILE_MIN")
	n, err := strconv.Atoi(v)
	if v == "" || v == "off" || err != nil || n < 0 {
		return math.MaxInt
	}
	return n
}()

// writeBody writes data (a body, or a chunk of one) to w: over plain
// HTTP/1.1, when data lies in an arena and is large enough, with
// sendfile(2) from the arena's memfd (net/http's ReadFrom path, as
// file_server's for files: the headers and the first bytes in one write,
// then the kernel moves the rest without a copy through user space);
// otherwise, over TLS or HTTP/2 above all, with a write from memory.
func writeBody(w http.ResponseWriter, r *http.Request, data []byte) error {
	if len(data) >= sendfileMin && r.TLS == nil && r.ProtoMajor == 1 {
		if chunk, ok := sendMode(w); ok {
			if chunk == 0 {
				if bf, ok := shard.OpenBody(data, 0); ok {
					_, err := w.(io.ReaderFrom).ReadFrom(bf.LimitedReader())
					bf.Close()
					return err
				}
			} else if tail := len(data)%int(chunk) + int(chunk); len(data)-tail > 0 {
				// Behind the idle timeout's writer, whole chunks go by
				// sendfile: the part of the body before them (at least
				// one chunk) is written from memory with the headers, and
				// flushed, so that net/http does not read the start of
				// the file itself.
				if bf, ok := shard.OpenBody(data[tail:], chunk); ok {
					defer bf.Close()
					if tail > 0 {
						if _, err := w.Write(data[:tail]); err != nil {
							return err
						}
					}
					if err := http.NewResponseController(w).Flush(); err != nil {
						return err
					}
					_, err := w.(io.ReaderFrom).ReadFrom(bf)
					return err
				}
			}
		}
	}
	_, err := w.Write(data)
	return err
}

// sendMode tells how a body file may be handed to w's ReadFrom (see
// shard.OpenBody): chunk 0 when no writer below limits each call (the
// file goes in a LimitedReader of its own length), else the size of the
// LimitedReader that Caddy's write idle timeout (IdleTimeoutWriter) wraps
// around every call, when the writers below it are ones known to pass
// that reader on unchanged to net/http. ok is false when w cannot
// ReadFrom, or when the chain is not one of those.
func sendMode(w http.ResponseWriter) (chunk int64, ok bool) {
	if _, ok := w.(io.ReaderFrom); !ok {
		return 0, false
	}
	for {
		if itw, ok := w.(*caddyhttp.IdleTimeoutWriter); ok {
			chunk := int64(itw.MaxChunk)
			if chunk <= 0 {
				chunk = caddyhttp.DefaultMaxWriteChunk
			}
			if itw.ResponseWriterWrapper == nil {
				return 0, false
			}
			for inner := itw.ResponseWriterWrapper.ResponseWriter; ; {
				switch fmt.Sprintf("%T", inner) {
				case "*http.response":
					return chunk, true
				case "*caddyhttp.readDeadlineWriter", "*caddyhttp.ResponseWriterWrapper":
					inner = inner.(interface{ Unwrap() http.ResponseWriter }).Unwrap()
				default:
					return 0, false
				}
			}
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return 0, true
		}
		w = u.Unwrap()
	}
}

// prepareAgain redoes prepare for another item (a newer version).
func prepareAgain(w http.ResponseWriter, r *http.Request, it *shard.Item, enc string) *response {
	hdr := w.Header()
	for _, k := range [...]string{"Etag", "Content-Type", "Last-Modified", "Content-Length", "Accept-Ranges"} {
		delete(hdr, k)
	}
	if v := hdr["Vary"]; len(v) > 0 && v[len(v)-1] == "Accept-Encoding" {
		hdr["Vary"] = v[:len(v)-1]
		if len(hdr["Vary"]) == 0 {
			delete(hdr, "Vary")
		}
	}
	resp := new(response)
	prepare(resp, w, r, it, enc)
	return resp
}

// cutShort logs a response whose body could not be completed after its
// headers were sent: net/http closes the connection (the body is shorter
// than its Content-Length), so the client sees the failure and no cache
// keeps the partial body. A client that hangs up is not logged here: the
// remote body's error is set only when the cluster could not supply a
// chunk.
func (h *Handler) cutShort(it *shard.Item, err error) {
	h.logger.Error("response cut short: a chunk of a large item could not be fetched",
		zap.String("path", it.Path), zap.Error(err))
}

// The preconditions of RFC 9110 section 13, evaluated as net/http's
// ServeContent does (its checkPreconditions, in net/http/fs.go), so that
// the decision taken before fetching a body is the one the response then
// carries, on every tier. modTime is zero when it is not a useful
// validator (Unix time 0 or 1, as file_server treats it).

type condResult int

const (
	condNone condResult = iota
	condTrue
	condFalse
)

// checkPreconditions returns 412 or 304 when the preconditions answer the
// request, else 0 and the Range header to honour ("" when If-Range does
// not match). hdr holds the response's ETag.
func checkPreconditions(hdr http.Header, r *http.Request, modTime time.Time) (status int, rangeHdr string) {
	etag := ""
	if v := hdr["Etag"]; len(v) > 0 {
		etag = v[0]
	}
	ch := checkIfMatch(r, etag)
	if ch == condNone {
		ch = checkIfUnmodifiedSince(r, modTime)
	}
	if ch == condFalse {
		return http.StatusPreconditionFailed, ""
	}
	switch checkIfNoneMatch(r, etag) {
	case condFalse:
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			return http.StatusNotModified, ""
		}
		return http.StatusPreconditionFailed, ""
	case condNone:
		if checkIfModifiedSince(r, modTime) == condFalse {
			return http.StatusNotModified, ""
		}
	}
	rangeHdr = r.Header.Get("Range")
	if rangeHdr != "" && checkIfRange(r, etag, modTime) == condFalse {
		rangeHdr = ""
	}
	return 0, rangeHdr
}

// writeNotModified trims the headers of a 304 as net/http does: no
// representation metadata but what guides cache updates.
func writeNotModified(hdr http.Header, hv itemHeaders) {
	delete(hdr, "Content-Type")
	delete(hdr, "Content-Length")
	delete(hdr, "Content-Encoding")
	delete(hdr, "Accept-Ranges")
	if len(hdr["Etag"]) > 0 && hdr["Etag"][0] != "" {
		delete(hdr, "Last-Modified")
	} else if hv.lastModified != "" {
		hdr["Last-Modified"] = []string{hv.lastModified}
	}
}

func checkIfMatch(r *http.Request, etag string) condResult {
	im := r.Header.Get("If-Match")
	if im == "" {
		return condNone
	}
	for {
		im = textproto.TrimString(im)
		if len(im) == 0 {
			break
		}
		if im[0] == ',' {
			im = im[1:]
			continue
		}
		if im[0] == '*' {
			return condTrue
		}
		tag, remain := scanETag(im)
		if tag == "" {
			break
		}
		if etagStrongMatch(tag, etag) {
			return condTrue
		}
		im = remain
	}
	return condFalse
}

func checkIfUnmodifiedSince(r *http.Request, modTime time.Time) condResult {
	ius := r.Header.Get("If-Unmodified-Since")
	if ius == "" || isZeroTime(modTime) {
		return condNone
	}
	t, err := http.ParseTime(ius)
	if err != nil {
		return condNone
	}
	// Last-Modified has no sub-second precision.
	if modTime.Truncate(time.Second).Compare(t) <= 0 {
		return condTrue
	}
	return condFalse
}

func checkIfNoneMatch(r *http.Request, etag string) condResult {
	inm := r.Header.Get("If-None-Match")
	if inm == "" {
		return condNone
	}
	buf := inm
	for {
		buf = textproto.TrimString(buf)
		if len(buf) == 0 {
			break
		}
		if buf[0] == ',' {
			buf = buf[1:]
			continue
		}
		if buf[0] == '*' {
			return condFalse
		}
		tag, remain := scanETag(buf)
		if tag == "" {
			break
		}
		if etagWeakMatch(tag, etag) {
			return condFalse
		}
		buf = remain
	}
	return condTrue
}

func checkIfModifiedSince(r *http.Request, modTime time.Time) condResult {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return condNone
	}
	ims := r.Header.Get("If-Modified-Since")
	if ims == "" || isZeroTime(modTime) {
		return condNone
	}
	t, err := http.ParseTime(ims)
	if err != nil {
		return condNone
	}
	if modTime.Truncate(time.Second).Compare(t) <= 0 {
		return condFalse
	}
	return condTrue
}

func checkIfRange(r *http.Request, etag string, modTime time.Time) condResult {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return condNone
	}
	ir := r.Header.Get("If-Range")
	if ir == "" {
		return condNone
	}
	if tag, _ := scanETag(ir); tag != "" {
		if etagStrongMatch(tag, etag) {
			return condTrue
		}
		return condFalse
	}
	// The If-Range value may also be a date.
	if modTime.IsZero() {
		return condFalse
	}
	t, err := http.ParseTime(ir)
	if err != nil {
		return condFalse
	}
	if t.Unix() == modTime.Unix() {
		return condTrue
	}
	return condFalse
}

var unixEpoch = time.Unix(0, 0)

func isZeroTime(t time.Time) bool { return t.IsZero() || t.Equal(unixEpoch) }

// scanETag returns the syntactically valid ETag at the start of s, and
// the rest of s; "", "" when there is none.
func scanETag(s string) (etag string, remain string) {
	s = textproto.TrimString(s)
	start := 0
	if strings.HasPrefix(s, "W/") {
		start = 2
	}
	if len(s[start:]) < 2 || s[start] != '"' {
		return "", ""
	}
	for i := start + 1; i < len(s); i++ {
		c := s[i]
		switch {
		case c == 0x21 || c >= 0x23 && c <= 0x7E || c >= 0x80:
		case c == '"':
			return s[:i+1], s[i+1:]
		default:
			return "", ""
		}
	}
	return "", ""
}

func etagStrongMatch(a, b string) bool { return a == b && a != "" && a[0] == '"' }

func etagWeakMatch(a, b string) bool {
	return strings.TrimPrefix(a, "W/") == strings.TrimPrefix(b, "W/")
}

// headerVals returns room for the 7 header values of one response (each
// used as a slice of length and capacity 1, so that an append never reaches
// the next), and for the bytes of the values it formats (headersOf): an
// empty slice with room for textLen bytes. They are cut from shared arrays
// of valsPerSlab responses, as net/textproto does for request headers: two
// allocations per valsPerSlab responses rather than two per response. An
// array lives as long as a header map still refers to any part of it.
func headerVals() ([]string, []byte) {
	s := slabs.Get().(*valSlab)
	if len(s.vals) < 7 {
		s.vals = make([]string, 7*valsPerSlab)
	}
	if len(s.text) < textLen {
		s.text = make([]byte, textLen*valsPerSlab)
	}
	v, t := s.vals[:7:7], s.text[:0:textLen]
	s.vals, s.text = s.vals[7:], s.text[textLen:]
	slabs.Put(s)
	return v, t
}

const valsPerSlab = 64

type valSlab struct {
	vals []string
	text []byte
}

// textLen is the room for the header values one response formats: an ETag
// made from a shard.Tag, a Last-Modified and a Content-Length.
const textLen = 2 + 2*len(shard.Tag{}) + len(http.TimeFormat) + len("9223372036854775807")

var slabs = sync.Pool{New: func() any { return new(valSlab) }}

// itemHeaders are the response header values of one encoding of an item.
// The strings are the item's own, or formatted for the response into the
// shared arrays of headerVals: a hit allocates nothing. Nothing is kept in
// the item: a memo of its formatted values cost every file ever served
// about 90 bytes for as long as it is held, where formatting them takes a
// hundred-odd nanoseconds per response.
type itemHeaders struct {
	etag, contentType, contentLength, lastModified string

	size    int64
	modTime time.Time // zero when not a useful validator
}

// usefulModTime is it's modification time as a validator: zero when it is
// not a useful one (as file_server: the Unix epoch, or a second past it).
func usefulModTime(it *shard.Item) time.Time {
	mt := it.ModTime()
	if u := mt.Unix(); u == 0 || u == 1 {
		return time.Time{}
	}
	return mt
}

// headersOf returns the header values of it in encoding enc ("" identity,
// else one of it.Variants; an encoding it has not is the identity). What it
// formats it writes into text (empty, with room for textLen bytes: from
// headerVals), each part once, before its string exists, and never again.
// The Last-Modified of a variant is its item's.
func headersOf(it *shard.Item, enc string, text []byte) itemHeaders {
	modTime := usefulModTime(it)
	h := itemHeaders{contentType: it.ContentType(), size: it.Size, modTime: modTime}
	if !modTime.IsZero() {
		text, h.lastModified = formatted(text, appendHTTPDate(text, modTime))
	}
	if enc != "" {
		if v := it.Variant(enc); v != nil {
			h.etag, h.size = v.ETag, v.Size
			_, h.contentLength = formatted(text, strconv.AppendInt(text, v.Size, 10))
			return h
		}
	}
	text, h.etag = formatted(text, it.AppendETag(text))
	_, h.contentLength = formatted(text, strconv.AppendInt(text, it.Size, 10))
	return h
}

// formatted returns what appending to text wrote, as a string, and the rest
// of text's room: b is text with the value appended (a new array if it did
// not fit, whose bytes are as much its own).
func formatted(text, b []byte) (rest []byte, s string) {
	v := b[len(text):]
	if len(v) == 0 {
		return text, ""
	}
	return v[len(v):], unsafe.String(&v[0], len(v))
}

// appendHTTPDate appends t as an HTTP date (http.TimeFormat, in UTC): the
// same bytes as t.UTC().AppendFormat(b, http.TimeFormat) in under a third
// of the time (27 against 91 ns here; TestAppendHTTPDate checks the bytes),
// as every response formats its Last-Modified.
func appendHTTPDate(b []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 1000 || year > 9999 {
		return t.AppendFormat(b, http.TimeFormat)
	}
	hour, minute, sec := t.Clock()
	const days, months = "SunMonTueWedThuFriSat", "JanFebMarAprMayJunJulAugSepOctNovDec"
	wd, mo := int(t.Weekday())*3, (int(month)-1)*3
	two := func(b []byte, n int) []byte { return append(b, byte('0'+n/10), byte('0'+n%10)) }
	b = append(b, days[wd:wd+3]...)
	b = append(b, ',', ' ')
	b = two(b, day)
	b = append(b, ' ')
	b = append(b, months[mo:mo+3]...)
	b = append(b, ' ')
	b = two(two(b, year/100), year%100)
	b = append(b, ' ')
	b = two(b, hour)
	b = append(b, ':')
	b = two(b, minute)
	b = append(b, ':')
	b = two(b, sec)
	return append(b, " GMT"...)
}

// noBody stands for bytes of a known size that are never read: it lets
// http.ServeContent answer HEAD from metadata alone.
type noBody int64

func (n noBody) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekEnd:
		return int64(n) + offset, nil
	default:
		return offset, nil
	}
}

func (noBody) Read([]byte) (int, error) { return 0, errors.New("shardcache: body not fetched") }

var allowGetHead = []string{"GET, HEAD"}

// plainRequest reports whether r carries none of the headers that make
// http.ServeContent do more than send the whole body.
func plainRequest(r *http.Request) bool {
	h := r.Header
	return len(h["Range"]) == 0 &&
		len(h["If-None-Match"]) == 0 &&
		len(h["If-Modified-Since"]) == 0 &&
		len(h["If-Match"]) == 0 &&
		len(h["If-Unmodified-Since"]) == 0
}

// errorStatus returns the status of the error being handled when the
// handler runs in an error route (to serve an error page), else 0.
func errorStatus(r *http.Request) int {
	reqErr, ok := r.Context().Value(caddyhttp.ErrorCtxKey).(error)
	if !ok {
		return 0
	}
	var herr caddyhttp.HandlerError
	if errors.As(reqErr, &herr) && herr.StatusCode > 0 {
		return herr.StatusCode
	}
	return http.StatusInternalServerError
}

// overrideStatus wraps w so that a 200 from http.ServeContent becomes code,
// when code is not 0.
func overrideStatus(w http.ResponseWriter, code int) http.ResponseWriter {
	if code == 0 {
		return w
	}
	return statusWriter{ResponseWriter: w, code: code}
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s statusWriter) WriteHeader(int) { s.ResponseWriter.WriteHeader(s.code) }

func (s statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
