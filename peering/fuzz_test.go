package peering

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"testing"
)

// FuzzDecodeFrame feeds arbitrary bytes to the frame reader and every
// payload decoder: they must fail cleanly (never panic, never read past the
// input, never accept an oversized frame), and whatever they accept must
// survive a re-encode and decode unchanged. Seeds are in
// testdata/fuzz/FuzzDecodeFrame and below.
func FuzzDecodeFrame(f *testing.F) {
	req := Request{Group: "/srv/www", Path: "/a.css", Version: "v1", Encoding: "br", Epoch: 42}
	get, _ := appendGet(nil, &req)
	f.Add(get)
	req.Offset, req.Length = 4<<20, 4<<20
	ranged, _ := appendGet(nil, &req)
	f.Add(ranged)
	m := sampleMeta(7)
	m.Variants = nil
	resp, _ := appendResponse(nil, ErrCodeNoError, &m)
	f.Add(resp)
	nf, _ := appendResponse(nil, ErrCodeNotFound, nil)
	f.Add(nf)
	hl, _ := appendHello(nil, &hello{Name: "n1", Ready: true})
	f.Add(append(hl, appendReady(nil, true)...))
	toc, _, _ := appendItems(nil, frameTOC, "g", []Meta{sampleMeta(1), sampleMeta(2)})
	f.Add(appendTOCEnd(toc))
	del, _, _ := appendDeletes(nil, "g", []string{"/a", "/b"})
	f.Add(del)
	hlan, _ := appendHello(nil, &hello{Name: "n2", Observer: true, Lan: "10.0.1.2:443"})
	f.Add(hlan)
	pg, _ := appendPurge(nil, &Purge{Group: "/srv/www", Path: "/img/a.png"})
	pp, _ := appendPurge(nil, &Purge{Group: "/srv/www", Path: "/css/", Prefix: true})
	f.Add(append(pg, pp...))
	sy, _ := appendSync(nil, &Sync{Group: "g", Log: 7, Seq: 3, Items: 1000})
	sy2, _ := appendSync(nil, &Sync{Group: "g", Mode: SyncResume, End: true, Log: 7, Seq: 9})
	sq, _ := appendSeq(nil, "g", 42)
	f.Add(append(append(sy, sq...), sy2...))
	f.Add(appendResume(nil, []Resume{{Group: "g", Log: 7, Seq: 9}, {Group: "h", Log: 1, Seq: 0}}))
	mg, _ := appendMetaGet(nil, &Request{Group: "g", Path: "/a.css", Epoch: 3})
	f.Add(mg)
	lan, _ := appendLan(nil, "10.0.1.2:443")
	nolan, _ := appendLan(nil, "")
	f.Add(append(lan, nolan...))
	st := State{Epoch: 7, Groups: []GroupState{{Name: "/srv/a", Ready: true}, {Name: "/srv/b"}}}
	hst, _ := appendHello(nil, &hello{Name: "n3", Ready: true, State: st})
	sf, _ := appendStateFrame(nil, &st)
	zf, _ := appendStateFrame(nil, &State{})
	f.Add(append(append(hst, sf...), zf...))
	// A STATE frame with groups out of order (refused).
	bad, start := beginFrame(nil, frameState)
	bad = appendState(bad, &State{Epoch: 1, Groups: []GroupState{{Name: "b"}, {Name: "a"}}})
	bad, _ = endFrame(bad, start)
	f.Add(bad)

	f.Fuzz(func(t *testing.T, data []byte) {
		// reader.uvarint decodes exactly as binary.Uvarint does.
		v1, n1 := binary.Uvarint(data)
		vr := newReader(data)
		v2 := vr.uvarint()
		if (n1 > 0) != (vr.err == nil) || n1 > 0 && (v1 != v2 || len(vr.s) != len(data)-n1) {
			t.Fatalf("uvarint: binary %d,%d; reader %d,%v", v1, n1, v2, vr.err)
		}

		// readHead and readFrame agree on the first frame.
		ft1, p1, err1 := readFrame(bytes.NewReader(data), nil)
		ft2, p2, rest, _, err2 := readHead(bytes.NewReader(data), make([]byte, 64))
		if (err1 == nil) != (err2 == nil) || err1 == nil && (ft1 != ft2 || !bytes.Equal(p1, p2)) {
			t.Fatalf("readFrame: %v %v; readHead: %v %v", ft1, err1, ft2, err2)
		}
		if err2 == nil && frameHeaderSize+len(p2)+len(rest) > len(data) {
			t.Fatal("readHead returned more than it read")
		}

		r := bytes.NewReader(data)
		for {
			ft, p, err := readFrame(r, nil)
			if err != nil {
				return
			}
			if len(p) > MaxFrameSize {
				t.Fatalf("payload of %d bytes", len(p))
			}
			checkRoundTrip(t, ft, p)
		}
	})
}

func checkRoundTrip(t *testing.T, ft frameType, p []byte) {
	t.Helper()
	var again []byte
	var err error
	switch ft {
	case frameGet:
		req, derr := decodeGet(p)
		if derr != nil {
			return
		}
		if again, err = appendGet(nil, &req); err != nil {
			t.Fatalf("re-encoding %+v: %v", req, err)
		}
		if got, _ := decodeGet(again[frameHeaderSize:]); got != req {
			t.Fatalf("GET: %+v != %+v", got, req)
		}
	case frameResponse:
		status, m, derr := decodeResponse(p)
		if derr != nil {
			return
		}
		if again, err = appendResponse(nil, status, &m); err != nil {
			t.Fatalf("re-encoding %+v: %v", m, err)
		}
		s2, m2, err := decodeResponse(again[frameHeaderSize:])
		if err != nil || s2 != status || !metaEqual(m, m2) {
			t.Fatalf("RESPONSE: %v %+v != %v %+v (%v)", s2, m2, status, m, err)
		}
	case frameHello:
		h, derr := decodeHello(p)
		if derr != nil {
			return
		}
		if again, err = appendHello(nil, &h); err != nil {
			t.Fatal(err)
		}
		if h2, _ := decodeHello(again[frameHeaderSize:]); !reflect.DeepEqual(h2, h) {
			t.Fatalf("HELLO: %+v != %+v", h2, h)
		}
	case frameReady:
		_, _ = decodeReady(p)
	case frameState:
		st, derr := decodeState(p)
		if derr != nil {
			return
		}
		if again, err = appendStateFrame(nil, &st); err != nil {
			t.Fatalf("re-encoding %+v: %v", st, err)
		}
		if got, err := decodeState(again[frameHeaderSize:]); err != nil || !reflect.DeepEqual(got, st) {
			t.Fatalf("STATE: %+v != %+v (%v)", got, st, err)
		}
	case framePurge:
		pg, derr := decodePurge(p)
		if derr != nil {
			return
		}
		if again, err = appendPurge(nil, &pg); err != nil {
			t.Fatalf("re-encoding %+v: %v", pg, err)
		}
		if got, err := decodePurge(again[frameHeaderSize:]); err != nil || got != pg {
			t.Fatalf("PURGE: %+v != %+v (%v)", got, pg, err)
		}
	case frameLan:
		lan, derr := decodeLan(p)
		if derr != nil {
			return
		}
		if again, err = appendLan(nil, lan); err != nil {
			t.Fatalf("re-encoding LAN %q: %v", lan, err)
		}
		if got, err := decodeLan(again[frameHeaderSize:]); err != nil || got != lan {
			t.Fatalf("LAN: %q != %q (%v)", got, lan, err)
		}
	case frameTOC, frameUpsert:
		g, items, derr := decodeItems(p)
		if derr != nil {
			return
		}
		again, skipped, err := appendItems(nil, ft, g, items)
		if err != nil || skipped != 0 {
			t.Fatalf("re-encoding %d items: %v (%d skipped)", len(items), err, skipped)
		}
		var back []Meta
		for len(again) > 0 {
			_, p2, n, err := splitFrame(again)
			if err != nil {
				t.Fatal(err)
			}
			g2, its, err := decodeItems(p2)
			if err != nil || g2 != g {
				t.Fatalf("items: %v", err)
			}
			back = append(back, its...)
			again = again[n:]
		}
		if len(back) != len(items) {
			t.Fatalf("%d items back, want %d", len(back), len(items))
		}
		for i := range items {
			if !metaEqual(back[i], items[i]) {
				t.Fatalf("item %d: %+v != %+v", i, back[i], items[i])
			}
		}
	case frameSync:
		sc, derr := decodeSync(p)
		if derr != nil {
			return
		}
		if again, err = appendSync(nil, &sc); err != nil {
			t.Fatalf("re-encoding %+v: %v", sc, err)
		}
		if got, err := decodeSync(again[frameHeaderSize:]); err != nil || got != sc {
			t.Fatalf("SYNC: %+v != %+v (%v)", got, sc, err)
		}
	case frameSeq:
		g, seq, derr := decodeSeq(p)
		if derr != nil {
			return
		}
		if again, err = appendSeq(nil, g, seq); err != nil {
			t.Fatal(err)
		}
		if g2, s2, err := decodeSeq(again[frameHeaderSize:]); err != nil || g2 != g || s2 != seq {
			t.Fatalf("SEQ: %q %d != %q %d (%v)", g2, s2, g, seq, err)
		}
	case frameResume:
		rs, derr := decodeResume(p)
		if derr != nil {
			return
		}
		again = appendResume(nil, rs)
		if got, err := decodeResume(again[frameHeaderSize:]); err != nil || !reflect.DeepEqual(got, rs) {
			t.Fatalf("RESUME: %+v != %+v (%v)", got, rs, err)
		}
	case frameMeta:
		req, derr := decodeMetaGet(p)
		if derr != nil {
			return
		}
		if again, err = appendMetaGet(nil, &req); err != nil {
			t.Fatal(err)
		}
		if got, err := decodeMetaGet(again[frameHeaderSize:]); err != nil || got != req {
			t.Fatalf("META: %+v != %+v (%v)", got, req, err)
		}
	case frameDelete:
		g, paths, derr := decodeDeletes(p)
		if derr != nil {
			return
		}
		again, _, err := appendDeletes(nil, g, paths)
		if err != nil {
			t.Fatal(err)
		}
		var back []string
		for len(again) > 0 {
			_, p2, n, err := splitFrame(again)
			if err != nil {
				t.Fatal(err)
			}
			_, ps, err := decodeDeletes(p2)
			if err != nil {
				t.Fatal(err)
			}
			back = append(back, ps...)
			again = again[n:]
		}
		if !reflect.DeepEqual(back, paths) {
			t.Fatalf("deletes: %q != %q", back, paths)
		}
	}
}
