package peering

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

func sampleMeta(i int) Meta {
	return Meta{
		Path:        fmt.Sprintf("/dir%d/file%d.html", i/100, i),
		Version:     fmt.Sprintf("%016x", i*7919),
		Size:        int64(i * 1000),
		ContentType: "text/html; charset=utf-8",
		ModTime:     time.Unix(1700000000, int64(i)),
		ETag:        fmt.Sprintf(`"%016x"`, i*7919),
		Variants: []Variant{
			{Encoding: "br", Size: int64(i * 300), ETag: `"br-1"`},
			{Encoding: "gzip", Size: int64(i * 400), ETag: `"gz-1"`},
		},
	}
}

// frames splits b into frames, failing the test on a bad one.
func frames(t *testing.T, b []byte) (types []frameType, payloads [][]byte) {
	t.Helper()
	for len(b) > 0 {
		ft, p, n, err := splitFrame(b)
		if err != nil {
			t.Fatalf("splitFrame: %v", err)
		}
		if len(p) > MaxFrameSize {
			t.Fatalf("frame of %d bytes", len(p))
		}
		types = append(types, ft)
		payloads = append(payloads, p)
		b = b[n:]
	}
	return types, payloads
}

func TestCodecRoundTrip(t *testing.T) {
	req := Request{Group: "/srv/www", Path: "/img/a.png", Version: "abc123", Encoding: "br", Epoch: 1<<63 + 5}
	b, err := appendGet(nil, &req)
	if err != nil {
		t.Fatal(err)
	}
	ft, p, err := readFrame(bytes.NewReader(b), nil)
	if err != nil || ft != frameGet {
		t.Fatalf("readFrame: %v %v", ft, err)
	}
	if got, err := decodeGet(p); err != nil || got != req {
		t.Errorf("GET round trip: %+v, %v", got, err)
	}

	m := sampleMeta(42)
	m.Variants = nil
	m.Encoding = "gzip"
	b, err = appendResponse(nil, ErrCodeNoError, &m)
	if err != nil {
		t.Fatal(err)
	}
	_, ps := frames(t, b)
	status, got, err := decodeResponse(ps[0])
	if err != nil || status != ErrCodeNoError || !metaEqual(got, m) {
		t.Errorf("RESPONSE round trip: %v %+v %v", status, got, err)
	}
	b, _ = appendResponse(nil, ErrCodeNotFound, nil)
	_, ps = frames(t, b)
	if status, _, err := decodeResponse(ps[0]); err != nil || status != ErrCodeNotFound {
		t.Errorf("not-found response: %v %v", status, err)
	}

	h := hello{Name: "n1", Ready: true, Observer: true}
	b, _ = appendHello(nil, &h)
	_, ps = frames(t, b)
	if got, err := decodeHello(ps[0]); err != nil || !reflect.DeepEqual(got, h) {
		t.Errorf("HELLO round trip: %+v %v", got, err)
	}

	h = hello{Name: "n2", Lan: "10.0.1.2:443"}
	b, _ = appendHello(nil, &h)
	_, ps = frames(t, b)
	if got, err := decodeHello(ps[0]); err != nil || !reflect.DeepEqual(got, h) {
		t.Errorf("HELLO with LAN round trip: %+v %v", got, err)
	}

	st := State{Epoch: 1<<64 - 1, Groups: []GroupState{{Name: "/srv/a", Ready: true}, {Name: "/srv/b"}, {Name: "z"}}}
	for _, h := range []hello{{Name: "n3", State: st}, {Name: "n3", Lan: "10.0.1.3:443", State: st}, {Name: "n3", State: State{Epoch: 9}}} {
		b, err = appendHello(nil, &h)
		if err != nil {
			t.Fatal(err)
		}
		_, ps = frames(t, b)
		if got, err := decodeHello(ps[0]); err != nil || !reflect.DeepEqual(got, h) {
			t.Errorf("HELLO with state round trip: %+v %v", got, err)
		}
	}
	for _, s := range []State{st, {}, {Epoch: 3}, {Groups: []GroupState{{Name: "g"}}}} {
		b, err = appendStateFrame(nil, &s)
		if err != nil {
			t.Fatal(err)
		}
		ts, ps := frames(t, b)
		if got, err := decodeState(ps[0]); ts[0] != frameState || err != nil || !got.Equal(s) {
			t.Errorf("STATE round trip: %+v %v", got, err)
		}
	}

	for _, pg := range []Purge{{Group: "site", Path: "/a.css"}, {Group: "site", Path: "/img/", Prefix: true}, {}} {
		b, err = appendPurge(nil, &pg)
		if err != nil {
			t.Fatal(err)
		}
		ts, ps := frames(t, b)
		if got, err := decodePurge(ps[0]); ts[0] != framePurge || err != nil || got != pg {
			t.Errorf("PURGE round trip: %+v %v", got, err)
		}
	}

	for _, lan := range []string{"10.0.1.2:443", "[::1]:8443", ""} {
		b, err = appendLan(nil, lan)
		if err != nil {
			t.Fatal(err)
		}
		ts, ps := frames(t, b)
		if got, err := decodeLan(ps[0]); ts[0] != frameLan || err != nil || got != lan {
			t.Errorf("LAN round trip: %q %v", got, err)
		}
	}

	for _, r := range []bool{true, false} {
		_, ps = frames(t, appendReady(nil, r))
		if got, err := decodeReady(ps[0]); err != nil || got != r {
			t.Errorf("READY round trip: %v %v", got, err)
		}
	}
	ts, ps := frames(t, appendTOCEnd(nil))
	if ts[0] != frameTOCEnd || len(ps[0]) != 0 {
		t.Error("TOC_END")
	}

	// Zero ModTime survives.
	z := Meta{Path: "/z"}
	b, _ = appendResponse(nil, ErrCodeNoError, &z)
	_, ps = frames(t, b)
	if _, got, err := decodeResponse(ps[0]); err != nil || !got.ModTime.IsZero() {
		t.Errorf("zero ModTime: %v %v", got.ModTime, err)
	}
}

func metaEqual(a, b Meta) bool {
	if !a.ModTime.Equal(b.ModTime) {
		return false
	}
	a.ModTime, b.ModTime = time.Time{}, time.Time{}
	if len(a.Variants) == 0 && len(b.Variants) == 0 {
		a.Variants, b.Variants = nil, nil
	}
	return reflect.DeepEqual(a, b)
}

// TestCodecItemsSplit: many items are split over frames within the limit,
// and come back whole and in order.
func TestCodecItemsSplit(t *testing.T) {
	items := make([]Meta, 5000)
	for i := range items {
		items[i] = sampleMeta(i)
		items[i].Path += strings.Repeat("x", i%300)
	}
	b, skipped, err := appendItems(nil, frameTOC, "/srv/www", items)
	if err != nil || skipped != 0 {
		t.Fatal(err, skipped)
	}
	ts, ps := frames(t, b)
	if len(ts) < 10 {
		t.Fatalf("%d frames for %d bytes", len(ts), len(b))
	}
	var got []Meta
	for i, p := range ps {
		if ts[i] != frameTOC {
			t.Fatal("frame type")
		}
		g, its, err := decodeItems(p)
		if err != nil || g != "/srv/www" {
			t.Fatalf("decodeItems: %q %v", g, err)
		}
		got = append(got, its...)
	}
	if len(got) != len(items) {
		t.Fatalf("%d items back, want %d", len(got), len(items))
	}
	for i := range items {
		if !metaEqual(got[i], items[i]) {
			t.Fatalf("item %d: %+v != %+v", i, got[i], items[i])
		}
	}

	// An item over a field limit is skipped, the rest still go.
	bad := append([]Meta{{Path: strings.Repeat("p", maxPathLen+1)}}, items[:3]...)
	b, skipped, err = appendItems(nil, frameUpsert, "g", bad)
	if err != nil || skipped != 1 {
		t.Fatalf("skipped %d, %v", skipped, err)
	}
	_, ps = frames(t, b)
	if _, its, err := decodeItems(ps[0]); err != nil || len(its) != 3 {
		t.Fatalf("%d items, %v", len(its), err)
	}

	var paths []string
	for i := range 20000 {
		paths = append(paths, fmt.Sprintf("/deleted/%d/%s", i, strings.Repeat("y", i%50)))
	}
	b, skipped, err = appendDeletes(nil, "g", paths)
	if err != nil || skipped != 0 {
		t.Fatal(err)
	}
	ts, ps = frames(t, b)
	var back []string
	for i, p := range ps {
		if ts[i] != frameDelete {
			t.Fatal("frame type")
		}
		g, ds, err := decodeDeletes(p)
		if err != nil || g != "g" {
			t.Fatal(err)
		}
		back = append(back, ds...)
	}
	if !reflect.DeepEqual(back, paths) || len(ts) < 2 {
		t.Fatalf("deletes: %d back in %d frames", len(back), len(ts))
	}
}

func TestCodecMalformed(t *testing.T) {
	req := Request{Group: "g", Path: "/p", Version: "v", Epoch: 7}
	get, _ := appendGet(nil, &req)
	m := sampleMeta(3)
	items, _, _ := appendItems(nil, frameTOC, "g", []Meta{m})
	hl, _ := appendHello(nil, &hello{Name: "n1"})
	pg, _ := appendPurge(nil, &Purge{Group: "g", Path: "/p", Prefix: true})
	lan, _ := appendLan(nil, "10.0.0.1:443")

	// Every truncation of a valid frame is an error, never a panic.
	for _, valid := range [][]byte{get, items, hl, pg, lan} {
		for i := range len(valid) {
			if _, _, err := readFrame(bytes.NewReader(valid[:i]), nil); err == nil {
				t.Fatalf("truncated frame (%d of %d bytes) accepted", i, len(valid))
			}
			// A payload cut short (with a consistent length) fails to decode.
			if i >= frameHeaderSize && i < len(valid) {
				p := valid[frameHeaderSize:i]
				if decodeAny(frameType(valid[1]), p) == nil && len(p) > 0 {
					// TOC frames end on item boundaries; only the group alone decodes.
					if frameType(valid[1]) != frameTOC || len(p) != 2 {
						t.Fatalf("truncated payload (%d bytes) of type %d decoded", len(p), valid[1])
					}
				}
			}
		}
	}

	cases := map[string][]byte{
		"bad version":       {2, byte(frameGet), 0, 0, 0, 0},
		"too large":         {1, byte(frameGet), 0, 1, 0, 1},
		"huge length":       {1, byte(frameGet), 0xff, 0xff, 0xff, 0xff},
		"trailing bytes":    append(append([]byte(nil), get...), 0),
		"string overrun":    {1, byte(frameGet), 0, 0, 0, 2, 10, 'a'},
		"field too long":    append([]byte{1, byte(frameGet), 0, 0, 0, 3}, 0xff, 0xff, 0x03),
		"varint overflow":   append([]byte{1, byte(frameGet), 0, 0, 0, 11}, bytes.Repeat([]byte{0xff}, 11)...),
		"bad ready":         {1, byte(frameReady), 0, 0, 0, 1, 2},
		"empty hello":       {1, byte(frameHello), 0, 0, 0, 2, 0, 0},
		"hello lan overrun": {1, byte(frameHello), 0, 0, 0, 5, 1, 'a', 0, 9, 'x'},
		"hello bad lan":     append([]byte{1, byte(frameHello), 0, 0, 0, 9, 1, 'a', 0, 5}, "x:0:1"...),
		"purge flags":       {1, byte(framePurge), 0, 0, 0, 3, 0, 0, 2},
		"purge trailing":    {1, byte(framePurge), 0, 0, 0, 4, 0, 0, 1, 0},
		"purge path long":   append([]byte{1, byte(framePurge), 0, 0, 0x10, 0x04, 0, 0x81, 0x20}, make([]byte, maxPathLen+1)...),
		"lan empty payload": {1, byte(frameLan), 0, 0, 0, 0},
		"lan bad address":   append([]byte{1, byte(frameLan), 0, 0, 0, 6, 5}, "x:0:1"...),
		"lan no port":       append([]byte{1, byte(frameLan), 0, 0, 0, 5, 4}, "host"...),
		"lan trailing":      {1, byte(frameLan), 0, 0, 0, 2, 0, 0},
		"many variants":     itemsWithVariantCount(maxVariants + 1),
		"huge size":         {1, byte(frameResponse), 0, 0, 0, 12, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			ft, p, err := readFrame(bytes.NewReader(b), nil)
			if err == nil {
				// Trailing data past the frame is the next frame's business:
				// check the payload decoder instead.
				if name == "trailing bytes" {
					b[5]++ // length covers the extra byte
					ft, p, err = readFrame(bytes.NewReader(b), nil)
					if err != nil {
						t.Fatal(err)
					}
				}
				err = decodeAny(ft, p)
			}
			if err == nil {
				t.Fatalf("accepted")
			}
			if !errors.Is(err, errProtocol) {
				t.Fatalf("error %v does not wrap errProtocol", err)
			}
		})
	}

	// Encoders refuse what decoders would refuse.
	long := strings.Repeat("x", maxFieldLen+1)
	if _, err := appendGet(nil, &Request{Group: long}); err == nil {
		t.Error("appendGet accepted a long group")
	}
	if _, err := appendHello(nil, &hello{Name: long}); err == nil {
		t.Error("appendHello accepted a long name")
	}
	if _, err := appendHello(nil, &hello{Name: "n1", Lan: long}); err == nil {
		t.Error("appendHello accepted a long LAN address")
	}
	for _, bad := range []string{"nope", "host:0", long + ":1"} {
		if _, err := appendLan(nil, bad); err == nil {
			t.Errorf("appendLan accepted %.20q", bad)
		}
	}
	if _, err := appendPurge(nil, &Purge{Group: long}); err == nil {
		t.Error("appendPurge accepted a long group")
	}
	if _, err := appendPurge(nil, &Purge{Path: strings.Repeat("/", maxPathLen+1)}); err == nil {
		t.Error("appendPurge accepted a long path")
	}
	if _, err := appendResponse(nil, ErrCodeNoError, &Meta{Size: -1}); err == nil {
		t.Error("appendResponse accepted a negative size")
	}
}

func itemsWithVariantCount(n int) []byte {
	m := Meta{Path: "/a"}
	b, _ := beginFrame(nil, frameTOC)
	b = appendStr(b, "g")
	b, _ = appendMeta(b, &m, false)
	b = append(b, byte(n))
	b, _ = endFrame(b, 0)
	return b
}

// decodeAny decodes a payload of type t with the matching decoder.
func decodeAny(t frameType, p []byte) error {
	var err error
	switch t {
	case frameGet:
		_, err = decodeGet(p)
	case frameResponse:
		_, _, err = decodeResponse(p)
	case frameHello:
		_, err = decodeHello(p)
	case frameReady:
		_, err = decodeReady(p)
	case frameTOC, frameUpsert:
		_, _, err = decodeItems(p)
	case frameDelete:
		_, _, err = decodeDeletes(p)
	case framePurge:
		_, err = decodePurge(p)
	case frameLan:
		_, err = decodeLan(p)
	case frameTOCEnd:
		if len(p) != 0 {
			err = errTrailingBytes
		}
	default:
		err = errUnexpected
	}
	return err
}

// TestHelloCompat: the LAN address is optional on the wire. A HELLO
// without it (the first version's) decodes, a node without one sends that
// HELLO, and fields a later version appends after it are skipped.
func TestHelloCompat(t *testing.T) {
	v1 := []byte{1, byte(frameHello), 0, 0, 0, 4, 2, 'n', '1', helloReady}
	ft, p, err := readFrame(bytes.NewReader(v1), nil)
	if err != nil || ft != frameHello {
		t.Fatal(ft, err)
	}
	if h, err := decodeHello(p); err != nil || !reflect.DeepEqual(h, hello{Name: "n1", Ready: true}) {
		t.Fatalf("first-version HELLO: %+v %v", h, err)
	}
	if b, _ := appendHello(nil, &hello{Name: "n1", Ready: true}); !bytes.Equal(b, v1) {
		t.Fatalf("HELLO without LAN: %q, want %q", b, v1)
	}

	// The version that added Lan: name, flags, Lan, nothing after.
	v2 := append([]byte{1, byte(frameHello), 0, 0, 0, 17, 2, 'n', '2', 0, 12}, "10.0.0.2:443"...)
	if h, err := decodeHello(v2[frameHeaderSize:]); err != nil || !reflect.DeepEqual(h, hello{Name: "n2", Lan: "10.0.0.2:443"}) {
		t.Fatalf("HELLO with LAN only: %+v %v", h, err)
	}
	if b, _ := appendHello(nil, &hello{Name: "n2", Lan: "10.0.0.2:443"}); !bytes.Equal(b, v2) {
		t.Fatalf("HELLO without state: %q, want %q", b, v2)
	}

	// A state without a LAN address sends Lan empty; fields a later
	// version appends after the state (and group flags it adds) are
	// skipped.
	b, _ := beginFrame(nil, frameHello)
	b = appendStr(b, "n1")
	b = append(b, helloObserver)
	b = appendStr(b, "")
	b = append(b, 5, 1)                                  // epoch, one group
	b = appendStr(b, "g")                                // its name
	b = append(b, groupReady|0x80)                       // its flags, one of a later version
	b = append(b, 7, 'f', 'u', 't', 'u', 'r', 'e', 0xff) // a later version's fields
	b, _ = endFrame(b, 0)
	_, ps := frames(t, b)
	want := hello{Name: "n1", Observer: true, State: State{Epoch: 5, Groups: []GroupState{{Name: "g", Ready: true}}}}
	if h, err := decodeHello(ps[0]); err != nil || !reflect.DeepEqual(h, want) {
		t.Fatalf("HELLO with later fields: %+v %v", h, err)
	}
	if b, _ := appendHello(nil, &want); !bytes.Contains(b, []byte{'n', '1', helloObserver, 0, 5, 1, 1, 'g', groupReady}) {
		t.Fatalf("HELLO with state and no LAN: %q", b)
	}

	for _, lan := range []string{"10.0.0.1:443", "127.0.0.1:8081", "[::1]:443", "cache-1.example:80"} {
		if err := checkLan(lan); err != nil {
			t.Errorf("checkLan(%q): %v", lan, err)
		}
	}
	for _, lan := range []string{"", "10.0.0.1", ":443", "h:0", "h:65536", "h:http", "a\x00b:1", "a b:1", "[::1:80", strings.Repeat("h", maxFieldLen-1) + ":1"} {
		if checkLan(lan) == nil {
			t.Errorf("checkLan(%q) accepted", lan)
		}
	}
}

func TestErrorIs(t *testing.T) {
	err := fmt.Errorf("fetching: %w", codeError(ErrCodeNotFound))
	if !errors.Is(err, ErrNotFound) || errors.Is(err, ErrInternal) {
		t.Error("errors.Is on codes")
	}
	if !errors.Is(&Error{Code: ErrCodeTooLarge, Msg: "x"}, ErrTooLarge) {
		t.Error("errors.Is on a fresh *Error")
	}
	if errorCode(errors.New("x")) != ErrCodeInternal || errorCode(fmt.Errorf("w: %w", ErrNotFound)) != ErrCodeNotFound {
		t.Error("errorCode")
	}
}

// TestReadHead: the first frame comes back whole however the stream
// delivers it, with the bytes after it and the end of the stream.
func TestReadHead(t *testing.T) {
	m := sampleMeta(5)
	m.Variants = nil
	resp, _ := appendResponse(nil, ErrCodeNoError, &m)
	bodyBytes := bytes.Repeat([]byte("b"), 3000)
	stream := append(append([]byte(nil), resp...), bodyBytes...)
	big, _, _ := appendItems(nil, frameTOC, "g", []Meta{sampleMeta(1), sampleMeta(2), sampleMeta(3)})

	for name, mk := range map[string]func([]byte) io.Reader{
		"whole":         func(b []byte) io.Reader { return bytes.NewReader(b) },
		"one byte":      func(b []byte) io.Reader { return iotest.OneByteReader(bytes.NewReader(b)) },
		"eof with data": func(b []byte) io.Reader { return iotest.DataErrReader(bytes.NewReader(b)) },
		"half and eof":  func(b []byte) io.Reader { return iotest.DataErrReader(iotest.HalfReader(bytes.NewReader(b))) },
	} {
		t.Run(name, func(t *testing.T) {
			for _, bufSize := range []int{0, 6, 64, 8192} {
				r := mk(stream)
				ft, p, rest, eof, err := readHead(r, make([]byte, bufSize))
				if err != nil || ft != frameResponse {
					t.Fatalf("buf %d: %v %v", bufSize, ft, err)
				}
				if _, got, err := decodeResponse(p); err != nil || !metaEqual(got, m) {
					t.Fatalf("buf %d: %+v %v", bufSize, got, err)
				}
				// rest and what is left in r make up the body.
				left, _ := io.ReadAll(r)
				if got := append(append([]byte(nil), rest...), left...); !bytes.Equal(got, bodyBytes) {
					t.Fatalf("buf %d: body of %d bytes", bufSize, len(got))
				}
				_ = eof
			}
			// A frame larger than the buffer.
			ft, p, _, _, err := readHead(mk(big), make([]byte, 16))
			if err != nil || ft != frameTOC {
				t.Fatal(err)
			}
			if _, items, err := decodeItems(p); err != nil || len(items) != 3 {
				t.Fatalf("%d items, %v", len(items), err)
			}
			// Truncated: an error, not a frame.
			if _, _, _, _, err := readHead(mk(resp[:len(resp)-1]), make([]byte, 64)); err == nil {
				t.Fatal("truncated frame accepted")
			}
		})
	}
	if _, _, _, eof, err := readHead(bytes.NewReader(nil), nil); err != io.EOF || !eof {
		t.Fatalf("empty stream: %v %v", eof, err)
	}
	if _, _, _, _, err := readHead(bytes.NewReader([]byte{1, 1, 0xff, 0, 0, 0}), nil); !errors.Is(err, errFrameTooLarge) {
		t.Fatalf("huge frame: %v", err)
	}
	if err := readEOF(bytes.NewReader([]byte{1})); err == nil {
		t.Fatal("readEOF accepted a byte")
	}
	if err := readEOF(bytes.NewReader(nil)); err != nil {
		t.Fatal(err)
	}
}

// TestStateBounds: a State over its bounds is refused by the decoders
// (HELLO and STATE) with a protocol error, before allocating for a claimed
// group count, and by the encoders.
func TestStateBounds(t *testing.T) {
	groups := func(n int, name func(i int) string) []GroupState {
		gs := make([]GroupState, n)
		for i := range gs {
			gs[i] = GroupState{Name: name(i)}
		}
		return gs
	}
	seq := func(i int) string { return fmt.Sprintf("g%04d", i) }
	// rawState encodes s without checking it, as a hostile peer would.
	rawState := func(s State) []byte {
		b, start := beginFrame(nil, frameState)
		b = appendState(b, &s)
		b, _ = endFrame(b, start)
		return b[frameHeaderSize:]
	}
	rawHello := func(s State) []byte {
		b, start := beginFrame(nil, frameHello)
		b = appendStr(b, "n1")
		b = append(b, 0)
		b = appendStr(b, "")
		b = appendState(b, &s)
		b, _ = endFrame(b, start)
		return b[frameHeaderSize:]
	}
	for name, tc := range map[string]struct {
		s    State
		want error
	}{
		"too many groups": {State{Groups: groups(maxGroups+1, seq)}, errTooManyGroups},
		"long name":       {State{Groups: []GroupState{{Name: strings.Repeat("x", maxFieldLen+1)}}}, errGroupName},
		"empty name":      {State{Groups: []GroupState{{Name: ""}, {Name: "a"}}}, errGroupName},
		"duplicate":       {State{Groups: []GroupState{{Name: "a"}, {Name: "a", Ready: true}}}, errGroupOrder},
		"unsorted":        {State{Groups: []GroupState{{Name: "b"}, {Name: "a"}}}, errGroupOrder},
		"too large":       {State{Groups: groups(maxGroups, func(i int) string { return fmt.Sprintf("%04d", i) + strings.Repeat("x", 250) })}, errStateTooLarge},
	} {
		t.Run(name, func(t *testing.T) {
			if err := checkState(tc.s); !errors.Is(err, tc.want) {
				t.Errorf("checkState: %v, want %v", err, tc.want)
			}
			if _, err := appendStateFrame(nil, &tc.s); err == nil {
				t.Error("appendStateFrame accepted it")
			}
			if _, err := appendHello(nil, &hello{Name: "n1", State: tc.s}); err == nil {
				t.Error("appendHello accepted it")
			}
			if name == "too large" {
				return // over a frame: a peer cannot send it
			}
			if _, err := decodeState(rawState(tc.s)); !errors.Is(err, errProtocol) || !errors.Is(err, tc.want) {
				t.Errorf("decodeState: %v, want a protocol error wrapping %v", err, tc.want)
			}
			if _, err := decodeHello(rawHello(tc.s)); !errors.Is(err, errProtocol) || !errors.Is(err, tc.want) {
				t.Errorf("decodeHello: %v, want a protocol error wrapping %v", err, tc.want)
			}
		})
	}

	// A claimed count over the bound, or over what the payload can hold,
	// is refused before the groups are allocated.
	for _, claim := range []uint64{maxGroups + 1, 1 << 40, maxGroups} {
		p := binary.AppendUvarint([]byte{0}, claim)
		var err error
		perRun := allocBytes(100, func() { _, err = decodeState(p) })
		if !errors.Is(err, errProtocol) {
			t.Errorf("claim of %d groups: %v", claim, err)
		}
		if perRun > 512 { // a GroupState is 24 bytes: 256 of them would be 6 KiB
			t.Errorf("claim of %d groups: %d bytes allocated", claim, perRun)
		}
	}

	// At the bounds: 256 groups, names up to 1024 bytes, within a frame.
	max := State{Epoch: 1, Groups: groups(maxGroups, func(i int) string { return fmt.Sprintf("%04d", i) + strings.Repeat("x", 200) })}
	max.Groups[0].Name = strings.Repeat("0", maxFieldLen)
	b, err := appendHello(nil, &hello{Name: strings.Repeat("n", maxFieldLen), Lan: strings.Repeat("h", maxFieldLen-5) + ":8443", State: max})
	if err != nil {
		t.Fatalf("HELLO at the bounds: %v", err)
	}
	_, ps := frames(t, b)
	if h, err := decodeHello(ps[0]); err != nil || !h.State.Equal(max) {
		t.Fatalf("HELLO at the bounds: %v", err)
	}
}

// allocBytes returns the bytes f allocates per run, averaged over runs.
func allocBytes(runs int, f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range runs {
		f()
	}
	runtime.ReadMemStats(&after)
	return (after.TotalAlloc - before.TotalAlloc) / uint64(runs)
}

// TestPeerFieldBounds: every string a peer sends is bounded when decoded
// (groups, names and other fields 1024 bytes, paths 4096), and one past
// its bound is a protocol error.
func TestPeerFieldBounds(t *testing.T) {
	long := strings.Repeat("x", maxFieldLen+1)
	longPath := "/" + strings.Repeat("p", maxPathLen)
	frame := func(ft frameType, fields ...string) []byte {
		b, start := beginFrame(nil, ft)
		for _, f := range fields {
			b = appendStr(b, f)
		}
		if ft == framePurge || ft == frameHello {
			b = append(b, 0) // flags
		}
		b, _ = endFrame(b, start)
		return b[frameHeaderSize:]
	}
	for name, tc := range map[string]struct {
		ft     frameType
		fields []string
	}{
		"purge group":  {framePurge, []string{long, "/p"}},
		"purge path":   {framePurge, []string{"g", longPath}},
		"get group":    {frameGet, []string{long, "/p", "", ""}},
		"get path":     {frameGet, []string{"g", longPath, "", ""}},
		"delete group": {frameDelete, []string{long, "/p"}},
		"delete path":  {frameDelete, []string{"g", "/ok", longPath}},
		"toc group":    {frameTOC, []string{long}},
		"upsert group": {frameUpsert, []string{long}},
		"hello name":   {frameHello, []string{long}},
		"lan":          {frameLan, []string{long}},
	} {
		err := decodeAny(tc.ft, frame(tc.ft, tc.fields...))
		if !errors.Is(err, errFieldTooLong) {
			t.Errorf("%s: %v, want errFieldTooLong", name, err)
		}
	}
	// At the bounds, accepted.
	at := strings.Repeat("x", maxFieldLen)
	atPath := "/" + strings.Repeat("p", maxPathLen-1)
	if pg, err := decodePurge(frame(framePurge, at, atPath)); err != nil || pg.Group != at || pg.Path != atPath {
		t.Errorf("purge at the bounds: %v", err)
	}
	if g, paths, err := decodeDeletes(frame(frameDelete, at, atPath)); err != nil || g != at || paths[0] != atPath {
		t.Errorf("delete at the bounds: %v", err)
	}
}
