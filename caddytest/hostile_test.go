package integration

// Hostile-input tests: the SAN port (UDP garbage, QUIC clients without a
// certificate, holders of a cluster certificate that break the protocol,
// climb out of the root, hold streams open or flood the control stream, a
// configured peer that floods its table of content) and the HTTP port
// (traversal in every encoding, huge paths, Range and If-* garbage, side
// by side with file_server). Run them with
//
//	CGO_ENABLED=0 go test -trimpath -tags nobadger,nomysql,nopgx -count=1 -run Hostile ./caddytest/

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/shardcache/caddy-shardcache/peering"
)

// ftCanary returns unique bytes to put just outside a root.
func ftCanary(t *testing.T) []byte {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return []byte("CANARY-" + hex.EncodeToString(b) + "\n")
}

// hostileSAN is the two-node cluster of TestHostileSAN.
type hostileSAN struct {
	t        *testing.T
	secret   string
	n1, n2   *clusterNode
	site     clusterSite
	canary   []byte
	own1     []string // non-empty files n1 owns
	probe    *peering.Credentials
	probeTLS *tls.Config
}

// health runs the well-behaved traffic while f runs: GETs on n1 of its own
// files, GETs on n2 of files n1 owns (each one a peer fetch: hot is 1
// byte), and raw fetches from n1 on a fresh connection with a cluster
// certificate. It fails the test on any failure, wrong body, peer error on
// n2, or a request slower than slow.
func (h *hostileSAN) health(t *testing.T, slow time.Duration, f func()) {
	t.Helper()
	before2 := h.n2.status(t).group()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var fails []string
	var n int
	var worst time.Duration
	note := func(took time.Duration, err string) {
		mu.Lock()
		defer mu.Unlock()
		n++
		worst = max(worst, took)
		if err != "" && len(fails) < 10 {
			fails = append(fails, err)
		} else if took > slow && len(fails) < 10 {
			fails = append(fails, fmt.Sprintf("slow: %s", took.Round(time.Millisecond)))
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			p := h.own1[i%len(h.own1)]
			for _, base := range []*clusterNode{h.n1, h.n2} {
				began := time.Now()
				r, err := do(http.MethodGet, base.base, p)
				took := time.Since(began)
				switch {
				case err != nil:
					note(took, fmt.Sprintf("%s: GET %s: %v", base.name, p, err))
				case r.status != 200 || !bytes.Equal(r.body, h.site.file(p)):
					note(took, fmt.Sprintf("%s: GET %s: %d %s", base.name, p, r.status, clusterPreview(r.body)))
				default:
					note(took, "")
				}
			}
			if i%4 == 0 {
				began := time.Now()
				st, rest, err := sanGet(h.n1.san, h.probeTLS, clusterGroup, p)
				took := time.Since(began)
				if err != nil || st != 0 || !endsWith(rest, h.site.file(p)) {
					note(took, fmt.Sprintf("SAN fetch of %s from n1: status %d, %d bytes, %v", p, st, len(rest), err))
				} else {
					note(took, "")
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	began := time.Now()
	f()
	took := time.Since(began)
	time.Sleep(100 * time.Millisecond) // and a little after
	close(stop)
	wg.Wait()
	after2 := h.n2.status(t).group()
	t.Logf("the case took %s; meanwhile %d well-behaved requests, slowest %s; n2 fetched %d files from n1",
		took.Round(time.Millisecond), n, worst.Round(time.Millisecond), after2.tier("peer").Requests-before2.tier("peer").Requests)
	for _, f := range fails {
		t.Errorf("well-behaved traffic during the case: %s", f)
	}
	if after2.PeerErrors != before2.PeerErrors {
		t.Errorf("n2 counted %d peer errors fetching from n1 during the case; want none", after2.PeerErrors-before2.PeerErrors)
	}
	if after2.tier("peer").Requests == before2.tier("peer").Requests {
		t.Errorf("n2 fetched nothing from n1 during the case: the peer path was not exercised")
	}
}

// TestHostileSAN runs two nodes (n1, n2 on 127.0.4.2-3:7946) and throws at
// n1's SAN port: UDP garbage, a QUIC client without a certificate, and
// clients with a valid cluster certificate that send malformed frames,
// frames over the maximum size, GETs that climb out of the root, streams
// they never finish (more than MaxIncomingStreams), and a control stream
// flooded with UPSERT and PURGE frames. During and after every case n1
// keeps serving HTTP, n2's fetches and fresh well-behaved SAN clients, and
// every case ends quickly.
func TestHostileSAN(t *testing.T) {
	needCaddy(t)
	site := genClusterSite(60, 31)
	members := ftMembers(4, 2)
	tmp := t.TempDir()
	canary := ftCanary(t)
	secret := newClusterSecret(t)
	g := newNodeGroup(t, secret)
	h := &hostileSAN{t: t, secret: secret, site: site, canary: canary}
	var nodes []*clusterNode
	for _, m := range members {
		www := filepath.Join(tmp, m.name, "www")
		root := filepath.Join(www, "site")
		writeClusterSite(t, root, site)
		for _, p := range []string{filepath.Join(www, "canary.txt"), filepath.Join(tmp, m.name, "canary.txt"), filepath.Join(tmp, "canary.txt")} {
			if err := os.WriteFile(p, canary, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Symlink("../canary.txt", filepath.Join(root, "escape.txt")); err != nil {
			t.Fatal(err)
		}
		o := ftNodeOpts{self: m, members: members, admin: fmt.Sprintf("127.0.0.1:%d", freePort(t)), port: freePort(t), root: root, hot: "1"}
		nodes = append(nodes, g.launch(m.name, m.san, fmt.Sprintf("http://127.0.0.1:%d", o.port), root, ftNodeCaddyfile(o)))
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range nodes {
		n.waitUp(n.caddyfile, deadline)
	}
	ftWaitReady(t, 30*time.Second, nodes)
	h.n1, h.n2 = nodes[0], nodes[1]
	for _, p := range site.paths() {
		if w := h.n1.mustWhere(t, p); w.Owner == "n1" && len(site.file(p)) > 0 {
			h.own1 = append(h.own1, p)
		}
	}
	if len(h.own1) < 5 {
		t.Fatalf("n1 owns %d non-empty files; want at least 5", len(h.own1))
	}
	h.probe = ftProbeCreds(t, secret, "probe")
	// The health checks' SAN fetches come from an identity of their own:
	// n1 caps the connections of one node name (4), and the cases below
	// use all of the probe's.
	h.probeTLS = ftProbeCreds(t, secret, "wellbehaved").ClientConfig("n1")
	n1 := h.n1
	own := h.own1[0]

	// One connection with a cluster certificate for the cases that break
	// only streams.
	dial := func(t *testing.T) (*quic.Conn, func()) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		conn, closeFn, err := ftDial(ctx, n1.san, h.probe.ClientConfig("n1"))
		if err != nil {
			t.Fatalf("dialling n1 with a cluster certificate: %v", err)
		}
		return conn, closeFn
	}
	// goodGet checks that conn still serves a well-formed GET.
	goodGet := func(t *testing.T, conn *quic.Conn, when string) {
		t.Helper()
		got, err, _ := ftStreamOutcome(conn, sanFrame(1, sanGetPayload(clusterGroup, own)), true, 3*time.Second)
		if err != nil || !bytes.HasSuffix(got, site.file(own)) {
			t.Errorf("%s: a good GET of %s on the same connection: %d bytes, %v", when, own, len(got), err)
		}
	}

	t.Run("udp_garbage", func(t *testing.T) {
		h.health(t, time.Second, func() {
			raddr, _ := net.ResolveUDPAddr("udp", n1.san)
			r := mrand.New(mrand.NewPCG(1, 2))
			var socks []*net.UDPConn
			for i := 0; i < 4; i++ {
				c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				socks = append(socks, c)
			}
			const datagrams = 6000
			began := time.Now()
			buf := make([]byte, 1500)
			for i := 0; i < datagrams; i++ {
				size := 1 + r.IntN(1452)
				b := buf[:size]
				for j := range b {
					b[j] = byte(r.Uint32())
				}
				switch i % 4 {
				case 0: // a long header, QUIC v1, "Initial", padded to 1200
					if size < 1200 {
						b = buf[:1200]
					}
					b[0] = 0xc0 | byte(r.IntN(4))
					copy(b[1:5], []byte{0, 0, 0, 1})
					b[5] = 8
				case 1: // a short header
					b[0] = 0x40 | b[0]&0x3f
				case 2: // a version negotiation-looking packet
					if size >= 5 {
						b[0] |= 0x80
						copy(b[1:5], []byte{0, 0, 0, 0})
					}
				}
				_, _ = socks[i%len(socks)].WriteToUDP(b, raddr)
				if i%500 == 499 {
					time.Sleep(time.Millisecond) // let loopback drain a little
				}
			}
			t.Logf("sent %d garbage datagrams in %s", datagrams, time.Since(began).Round(time.Millisecond))
		})
	})

	t.Run("no_client_certificate", func(t *testing.T) {
		h.health(t, time.Second, func() {
			for i := 0; i < 20; i++ {
				tc := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{peering.ALPN}, MinVersion: tls.VersionTLS13}
				began := time.Now()
				st, rest, err := sanGet(n1.san, tc, clusterGroup, own)
				if !refusedAtConnection(err) || len(rest) > 0 {
					t.Errorf("a QUIC client without a certificate: status %d, %d bytes, err %v; want refused at the handshake", st, len(rest), err)
				}
				if i == 0 {
					t.Logf("refused in %s: %v", time.Since(began).Round(time.Millisecond), err)
				}
			}
		})
	})

	t.Run("malformed_frames", func(t *testing.T) {
		conn, closeFn := dial(t)
		defer closeFn()
		good := sanGetPayload(clusterGroup, own)
		long := sanGetPayload(clusterGroup, "/"+strings.Repeat("a", 5000))
		truncated := sanFrame(1, good)[:10]
		binary.BigEndian.PutUint32(truncated[2:], 40)
		cases := []struct {
			name string
			data []byte
		}{
			{"version 2", []byte{2, 1, 0, 0, 0, 0}},
			{"version 0 with a payload", append([]byte{0, 1, 0, 0, 0, 3}, 1, 2, 3)},
			{"unknown frame type 0x7f", sanFrame(0x7f, nil)},
			{"a RESPONSE sent to the server", sanFrame(2, []byte{0})},
			{"READY as the first frame", sanFrame(4, []byte{1})},
			{"TOC_END as the first frame", sanFrame(6, nil)},
			{"header only (3 bytes)", []byte{1, 1, 0}},
			{"GET: payload shorter than its length", truncated},
			{"GET: a trailing byte in the payload", sanFrame(1, append(append([]byte{}, good...), 0))},
			{"GET: uvarint overflow", sanFrame(1, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f})},
			{"GET: string longer than the payload", sanFrame(1, []byte{0x50, 'a'})},
			{"GET: path over 4096 bytes", sanFrame(1, long)},
			{"GET: empty payload", sanFrame(1, nil)},
			{"GET then bytes after the frame", append(sanFrame(1, good), 'x', 'y')},
			{"two GETs on one stream", append(sanFrame(1, good), sanFrame(1, good)...)},
			{"empty stream (FIN only)", nil},
			{"HELLO with an empty name", sanFrame(3, append(sanStr(nil, ""), 0))},
			{"HELLO without flags", sanFrame(3, sanStr(nil, "probe"))},
			{"HELLO with a bad lan", sanFrame(3, sanStr(append(sanStr(nil, "probe"), 0), "no port here"))},
		}
		h.health(t, time.Second, func() {
			for _, c := range cases {
				got, err, took := ftStreamOutcome(conn, c.data, true, 3*time.Second)
				code := ftResetCode(err)
				if code != int64(peering.ErrCodeBadRequest) || len(got) > 0 {
					t.Errorf("%s: %d bytes back (%q), end %v (reset code %d) after %s; want a reset with ErrCodeBadRequest (2) and nothing else",
						c.name, len(got), clusterPreview(got), err, code, took.Round(time.Millisecond))
				}
				if took > time.Second {
					t.Errorf("%s: answered after %s; want at once", c.name, took.Round(time.Millisecond))
				}
			}
			goodGet(t, conn, "after the malformed frames")
		})
		// Cases that end the connection: each on its own.
		closing := []struct {
			name string
			data []byte
			want quic.ApplicationErrorCode
		}{
			{"HELLO naming another node than the certificate", sanFrame(3, append(sanStr(nil, "n2"), 0)), peering.CloseBadIdentity},
			{"control stream: a frame over MaxFrameSize after HELLO", append(sanFrame(3, append(sanStr(nil, "probe"), 0)), 1, 9, 0xff, 0xff, 0xff, 0xff), peering.CloseProtocolError},
			{"control stream: a malformed PURGE after HELLO", append(sanFrame(3, append(sanStr(nil, "probe"), 0)), sanFrame(9, []byte{0x7f})...), peering.CloseProtocolError},
			{"control stream: bad version after HELLO", append(sanFrame(3, append(sanStr(nil, "probe"), 0)), 7, 9, 0, 0, 0, 0), peering.CloseProtocolError},
		}
		h.health(t, time.Second, func() {
			for _, c := range closing {
				conn, closeFn := dial(t)
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				str, err := conn.OpenStreamSync(ctx)
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				began := time.Now()
				_, _ = str.Write(c.data) // the control stream stays open
				go io.Copy(io.Discard, str)
				select {
				case <-conn.Context().Done():
					var ae *quic.ApplicationError
					cause := context.Cause(conn.Context())
					if !errors.As(cause, &ae) || ae.ErrorCode != c.want || !ae.Remote {
						t.Errorf("%s: the connection ended with %v; want closed by n1 with code %#x", c.name, cause, c.want)
					} else {
						t.Logf("%s: closed by n1 after %s: %v", c.name, time.Since(began).Round(time.Millisecond), cause)
					}
				case <-time.After(3 * time.Second):
					t.Errorf("%s: the connection is still open after 3s; want it closed with code %#x", c.name, c.want)
				}
				closeFn()
			}
		})
	})

	t.Run("frame_length_over_max", func(t *testing.T) {
		conn, closeFn := dial(t)
		defer closeFn()
		h.health(t, time.Second, func() {
			for _, n := range []uint32{peering.MaxFrameSize + 1, 1 << 24, 0xffffffff} {
				for _, typ := range []byte{1, 3} {
					hdr := []byte{1, typ, 0, 0, 0, 0}
					binary.BigEndian.PutUint32(hdr[2:], n)
					// No payload and no FIN: the length alone must be refused.
					got, err, took := ftStreamOutcome(conn, hdr, false, 3*time.Second)
					if code := ftResetCode(err); code != int64(peering.ErrCodeBadRequest) || len(got) > 0 {
						t.Errorf("type %d, length %d: %d bytes back, end %v after %s; want a reset with ErrCodeBadRequest at once", typ, n, len(got), err, took.Round(time.Millisecond))
					} else if took > 500*time.Millisecond {
						t.Errorf("type %d, length %d: refused after %s; want at once, before any payload", typ, n, took.Round(time.Millisecond))
					}
				}
			}
			goodGet(t, conn, "after the oversized frames")
		})
	})

	t.Run("traversal", func(t *testing.T) {
		conn, closeFn := dial(t)
		defer closeFn()
		paths := []string{
			"/../../etc/passwd", "/a/../../b", "/../canary.txt", "/../../canary.txt", "/../../../canary.txt",
			"../canary.txt", "canary.txt", "/..", "/../", "/./../canary.txt", "/a/b/../../../canary.txt",
			"//../canary.txt", "/%2e%2e/canary.txt", "/..%2fcanary.txt", "/..\\canary.txt", "\\..\\canary.txt",
			"/\x00/../canary.txt", "/../canary.txt\x00", "/" + strings.Repeat("../", 200) + "etc/passwd",
			"/escape.txt", "/etc/passwd", "", "/", ".", "/.",
		}
		groups := []string{clusterGroup, "", "..", "../" + clusterGroup, "/", filepath.Dir(n1.root)}
		h.health(t, time.Second, func() {
			for _, grp := range groups {
				for _, p := range paths {
					got, err, took := ftStreamOutcome(conn, sanFrame(1, sanGetPayload(grp, p)), true, 3*time.Second)
					if bytes.Contains(got, canary) || bytes.Contains(got, []byte("root:x:0:0")) {
						t.Errorf("group %q, GET %q: the answer holds bytes from outside the root: %s", grp, p, clusterPreview(got))
					}
					status := int64(-1)
					if err == nil && len(got) >= 7 && got[0] == 1 && got[1] == 2 {
						s, _ := binary.Uvarint(got[6:])
						status = int64(s)
					}
					code := ftResetCode(err)
					if status != int64(peering.ErrCodeNotFound) && code != int64(peering.ErrCodeBadRequest) {
						t.Errorf("group %q, GET %q: status %d, reset %d, %d bytes, %v; want NOT_FOUND (1) or a reset with BAD_REQUEST (2)", grp, p, status, code, len(got), err)
					}
					if took > time.Second {
						t.Errorf("group %q, GET %q: answered after %s", grp, p, took.Round(time.Millisecond))
					}
				}
			}
			goodGet(t, conn, "after the traversal attempts")
		})
	})

	t.Run("unfinished_streams", func(t *testing.T) {
		// Connections that open every stream n1 allows and send half a
		// frame on each, never the rest.
		const conns = 4
		type held struct {
			conn    *quic.Conn
			closeFn func()
			strs    []*quic.Stream
		}
		var hs []held
		defer func() {
			for _, x := range hs {
				x.closeFn()
			}
		}()
		g0 := n1.goroutines()
		var opened time.Time
		var during int
		h.health(t, time.Second, func() {
			for i := 0; i < conns; i++ {
				conn, closeFn := dial(t)
				x := held{conn: conn, closeFn: closeFn}
				for {
					str, err := conn.OpenStream()
					if err != nil {
						break // the peer's limit
					}
					_, _ = str.Write([]byte{1, 1, 0, 0, 0, 40, 3}) // a GET's header and 1 of 40 bytes
					x.strs = append(x.strs, str)
				}
				hs = append(hs, x)
			}
			opened = time.Now()
			t.Logf("opened %d connections × %d unfinished streams (the limit per connection)", conns, len(hs[0].strs))
			// One more stream on a full connection waits.
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			_, err := hs[0].conn.OpenStreamSync(ctx)
			cancel()
			if err == nil {
				t.Errorf("a stream beyond the %d unfinished ones opened at once; want it to wait for a slot", len(hs[0].strs))
			}
			time.Sleep(500 * time.Millisecond)
			during = n1.goroutines()
			t.Logf("n1's goroutines: %d before, %d with the unfinished streams", g0, during)
			// The per-stream deadline (10s) resets them and frees the slots.
			str := hs[0].strs[0]
			_ = str.SetReadDeadline(time.Now().Add(15 * time.Second))
			_, err = io.ReadAll(str)
			code := ftResetCode(err)
			t.Logf("an unfinished stream ended %s after it was opened: %v", time.Since(opened).Round(time.Millisecond), err)
			if code != int64(peering.ErrCodeTimeout) {
				t.Errorf("an unfinished stream ended with %v (code %d); want a reset with ErrCodeTimeout (6) at the stream deadline", err, code)
			}
			if took := time.Since(opened); took > 12*time.Second {
				t.Errorf("an unfinished stream was reset only after %s; want at the 10s stream deadline", took.Round(time.Millisecond))
			}
		})
		time.Sleep(300 * time.Millisecond)
		goodGet(t, hs[0].conn, "on a connection whose stream slots were all held, after the stream deadline")
		for _, x := range hs {
			x.closeFn()
		}
		hs = nil
		var g1 int
		for i := 0; i < 40; i++ {
			if g1 = n1.goroutines(); g1 <= g0+20 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("n1's goroutines after: %d", g1)
		if g1 > g0+20 {
			t.Errorf("n1 has %d goroutines after the unfinished streams ended; %d before", g1, g0)
		}
	})

	t.Run("control_stream_flood", func(t *testing.T) {
		conn, closeFn := dial(t)
		defer closeFn()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		str, err := conn.OpenStreamSync(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := str.Write(sanFrame(3, append(sanStr(nil, "probe"), 0))); err != nil {
			t.Fatal(err)
		}
		var readBack atomic.Int64
		go func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := str.Read(buf)
				readBack.Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
		st0 := n1.status(t).group()
		where0 := n1.mustWhere(t, own)
		rss0 := n1.rss()
		// UPSERT frames as full as MaxFrameSize allows: the dialer's are
		// read and ignored. Some claim n1's own paths with other versions.
		const frames = 1000
		var sent int64
		var items int
		h.health(t, time.Second, func() {
			began := time.Now()
			for i := 0; i < frames; i++ {
				p := sanStr(nil, clusterGroup)
				for len(p) < peering.MaxFrameSize-200 {
					path := fmt.Sprintf("/flood/%d/%d.bin", i, items)
					if items%50 == 0 {
						path = own
					}
					p = ftItem(p, path, fmt.Sprintf("%032x", items), 1<<40)
					items++
				}
				f := sanFrame(7, p)
				if _, err := str.Write(f); err != nil {
					t.Fatalf("writing UPSERT %d: %v", i, err)
				}
				sent += int64(len(f))
			}
			t.Logf("sent %d UPSERT frames (%d items, %d MiB) on a control stream in %s", frames, items, sent>>20, time.Since(began).Round(time.Millisecond))
		})
		time.Sleep(200 * time.Millisecond)
		st1 := n1.status(t).group()
		if st1.TOCItems != st0.TOCItems || st1.PrimedItems != st0.PrimedItems {
			t.Errorf("after the flood, n1 knows %d+%d items; %d+%d before: a dialer's UPSERTs changed its table", st1.PrimedItems, st1.TOCItems, st0.PrimedItems, st0.TOCItems)
		}
		if w := n1.mustWhere(t, own); w.Version != where0.Version {
			t.Errorf("after the flood, n1 has %s at version %s; was %s", own, w.Version, where0.Version)
		}
		rss1 := n1.rss()
		t.Logf("n1's RSS: %d MiB before, %d MiB after the UPSERT flood; it sent back %d bytes", rss0>>20, rss1>>20, readBack.Load())
		if conn.Context().Err() != nil {
			t.Logf("the flooding connection was closed: %v", context.Cause(conn.Context()))
		}

		// PURGE frames: each one of the whole group makes n1 read its
		// share of the root again. Any holder of a certificate may send
		// them (observers purge).
		const purges = 300
		g0 := n1.goroutines()
		var peakG int
		h.health(t, 2*time.Second, func() {
			began := time.Now()
			var b []byte
			for i := 0; i < purges; i++ {
				b = append(b, sanFrame(9, append(sanStr(sanStr(nil, clusterGroup), ""), 1))...)
			}
			if _, err := str.Write(b); err != nil {
				t.Fatalf("writing PURGEs: %v", err)
			}
			// Until n1 has settled: its goroutines back near where they
			// were.
			for time.Since(began) < 20*time.Second {
				g := n1.goroutines()
				peakG = max(peakG, g)
				if g <= g0+10 && time.Since(began) > 300*time.Millisecond {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			t.Logf("%d whole-group PURGE frames: n1 settled after %s (goroutines %d before, peak %d)", purges, time.Since(began).Round(time.Millisecond), g0, peakG)
		})
		if w := n1.mustWhere(t, own); w.Version != where0.Version {
			t.Errorf("after the purges, n1 has %s at version %s; was %s", own, w.Version, where0.Version)
		}
		t.Logf("n1's RSS after the purges: %d MiB", n1.rss()>>20)
	})

	// Nothing from outside the root ever came back over HTTP either.
	for _, p := range []string{"/escape.txt", "/../canary.txt"} {
		for _, n := range nodes {
			if r, err := do(http.MethodGet, n.base, p); err == nil && bytes.Contains(r.body, canary) {
				t.Errorf("%s: GET %s served the canary from outside the root", n.name, p)
			}
		}
	}
}

// TestHostileFakePeer: n1's configured peer "evil" (127.0.4.20:7946) is
// this test, with a certificate from the cluster CA. When n1 dials it,
// evil floods n1 with a table of content of 300 000 items (far more than
// any real site here), then 300 000 upserts, some of them claiming paths
// that n1 owns. n1 must keep serving its own files byte for byte meanwhile,
// and files the table of content names that exist nowhere answer 502 in
// bounded time (evil answers every fetch NOT_FOUND). The memory that the
// flood costs n1 is measured and reported: the table of content has no
// limit per peer.
func TestHostileFakePeer(t *testing.T) {
	needCaddy(t)
	site := genClusterSite(40, 32)
	root := filepath.Join(t.TempDir(), "site")
	writeClusterSite(t, root, site)
	secret := newClusterSecret(t)
	evilAddr := "127.0.4.20:7946"
	members := []clusterMember{{"n1", "127.0.4.10:7946"}, {"evil", evilAddr}}
	creds := ftProbeCreds(t, secret, "evil")
	udp, err := net.ListenPacket("udp", evilAddr)
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	defer udp.Close()
	defer tr.Close()
	ln, err := tr.Listen(creds.ServerConfig(), &quic.Config{MaxIdleTimeout: 5 * time.Second, KeepAlivePeriod: 200 * time.Millisecond, MaxIncomingStreams: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	g := newNodeGroup(t, secret)
	o := ftNodeOpts{self: members[0], members: members, admin: fmt.Sprintf("127.0.0.1:%d", freePort(t)), port: freePort(t), root: root, hot: "1"}
	n1 := g.launch("n1", members[0].san, fmt.Sprintf("http://127.0.0.1:%d", o.port), root, ftNodeCaddyfile(o))
	n1.waitUp(n1.caddyfile, time.Now().Add(20*time.Second))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := ln.Accept(ctx)
	if err != nil {
		t.Fatalf("n1 never dialled evil: %v", err)
	}
	defer conn.CloseWithError(0, "")
	ctl, err := conn.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hello := make([]byte, 6)
	if _, err := io.ReadFull(ctl, hello); err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(io.Discard, ctl, int64(binary.BigEndian.Uint32(hello[2:]))); err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, ctl)
	// Every fetch n1 sends evil: NOT_FOUND.
	go func() {
		for {
			s, err := conn.AcceptStream(context.Background())
			if err != nil {
				return
			}
			go func() {
				_, _ = io.Copy(io.Discard, s)
				_, _ = s.Write(sanFrame(2, []byte{1}))
				_ = s.Close()
			}()
		}
	}()
	if _, err := ctl.Write(sanFrame(3, append(sanStr(nil, "evil"), 1))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "n1 to see evil up", func() bool { return ftSeesReady(n1, "evil") })
	var own []string
	for _, p := range site.paths() {
		if w := n1.mustWhere(t, p); w.Owner == "n1" && len(site.file(p)) > 0 {
			own = append(own, p)
		}
	}
	rss0 := n1.rss()
	st0 := n1.status(t).group()

	const total = 300000
	write := func(typ byte, from, to int) (frames int) {
		for i := from; i < to; {
			p := sanStr(nil, clusterGroup)
			for ; i < to && len(p) < peering.MaxFrameSize-200; i++ {
				path := fmt.Sprintf("/evil/%06d.bin", i)
				if typ == 7 && i%1000 == 0 && len(own) > 0 {
					path = own[(i/1000)%len(own)] // claims a path n1 owns
				}
				p = ftItem(p, path, fmt.Sprintf("%032x", i), int64(i))
			}
			if _, err := ctl.Write(sanFrame(typ, p)); err != nil {
				t.Fatalf("writing frame: %v", err)
			}
			frames++
		}
		return frames
	}
	stop := make(chan struct{})
	var fails atomic.Int64
	var worst atomic.Int64
	var checks atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			p := own[i%len(own)]
			began := time.Now()
			r, err := do(http.MethodGet, n1.base, p)
			if d := int64(time.Since(began)); d > worst.Load() {
				worst.Store(d)
			}
			checks.Add(1)
			if err != nil || r.status != 200 || !bytes.Equal(r.body, site.file(p)) {
				if fails.Add(1) <= 3 {
					t.Errorf("n1: GET %s during the flood: %v %v", p, err, r)
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	began := time.Now()
	frames := write(5, 0, total)
	_, _ = ctl.Write(sanFrame(6, nil))
	frames += write(7, total, 2*total)
	sentIn := time.Since(began)
	// Until n1 has taken it all in.
	var st1 clusterGroupStatus
	// n1 stores every entry evil sent, within the per-peer caps (which
	// node answers for a path is decided at lookup, in ring order), but
	// refuses (counts, logs, never serves) those evil does not hold under
	// n1's ring: about half of them in a ring of two, and the claims of
	// n1's own paths.
	sent := int64(2*total - 300 + min(300, len(own))) // distinct paths: 300 claims of own paths
	ok, took := pollEvery(20*time.Second, 50*time.Millisecond, func() bool {
		st1 = n1.status(t).group()
		return st1.TOCItems >= sent
	})
	close(stop)
	wg.Wait()
	rss1 := n1.rss()
	t.Logf("evil sent %d frames (%d items) in %s; n1's table of content: %d items before, %d after (%s later)",
		frames, 2*total, sentIn.Round(time.Millisecond), st0.TOCItems, st1.TOCItems, took.Round(time.Millisecond))
	t.Logf("n1's RSS: %d MiB before, %d MiB after: about %d bytes per item of a peer's table of content",
		rss0>>20, rss1>>20, (rss1-rss0)/int64(max(1, st1.TOCItems-st0.TOCItems)))
	t.Logf("n1 served %d GETs of its own files meanwhile, %d failed, slowest %s", checks.Load(), fails.Load(), time.Duration(worst.Load()).Round(time.Millisecond))
	refused := st1.RefusedEntries - st0.RefusedEntries
	t.Logf("n1 stored %d entries and refused %d (not evil's under n1's ring: never served)", st1.TOCItems, refused)
	if !ok || st1.TOCItems > sent {
		t.Errorf("n1's table of content holds %d entries 20s after the flood; want the %d evil sent", st1.TOCItems, sent)
	}
	if lo, hi := int64(2*total*35/100), int64(2*total*65/100); refused < lo || refused > hi {
		t.Errorf("refused %d of %d entries: want about half (evil holds about half the paths)", refused, 2*total)
	}
	if time.Duration(worst.Load()) > 2*time.Second {
		t.Errorf("a GET of n1's own file took %s during the flood", time.Duration(worst.Load()).Round(time.Millisecond))
	}
	// n1's own files: evil's claims do not change what n1 serves.
	for _, p := range own {
		if r := get(t, n1.base, p); r.status != 200 || !bytes.Equal(r.body, site.file(p)) {
			t.Errorf("n1: GET %s after evil claimed it: %d %s", p, r.status, clusterPreview(r.body))
		}
	}
	// A path only the table of content names: 502, quickly.
	b := time.Now()
	r := get(t, n1.base, "/evil/000123.bin")
	t.Logf("GET /evil/000123.bin (named only by evil's table): %d in %s", r.status, time.Since(b).Round(time.Millisecond))
	if r.status != http.StatusBadGateway && r.status != http.StatusNotFound {
		t.Errorf("GET /evil/000123.bin: %d; want 502 (known, unreadable) or 404", r.status)
	}
}

// TestHostileHTTP serves one tree with shardcache and with file_server on
// two sites of one Caddy and sends both: traversal in every encoding that
// can be sent raw (a canary file sits just outside the root), very long
// paths, Range headers with many, overlapping, huge or garbage ranges, and
// If-* headers with garbage. shardcache must never serve the canary, never
// answer 5xx, answer every request in bounded time, and give the statuses
// file_server gives for Range and If-* (the bodies too, for ranges).
func TestHostileHTTP(t *testing.T) {
	needCaddy(t)
	www := filepath.Join(t.TempDir(), "www")
	root := filepath.Join(www, "site")
	canary := ftCanary(t)
	rbin := make([]byte, 10000)
	for i := range rbin {
		rbin[i] = byte(i * 7)
	}
	writeTree(t, root, map[string][]byte{
		"index.html":   []byte("<p>index</p>\n"),
		"r.bin":        rbin,
		"dir/a.txt":    []byte("a\n"),
		"..a.txt":      []byte("dots in a name\n"),
		"a..b.txt":     []byte("dots inside a name\n"),
		"dir/..%5c.tx": []byte("odd name\n"),
	})
	for _, p := range []string{filepath.Join(www, "canary.txt"), filepath.Join(filepath.Dir(www), "canary.txt"), filepath.Join(root, "..", "..", "..", "canary.txt")} {
		if err := os.WriteFile(p, canary, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	scPort, fsPort := freePort(t), freePort(t)
	cf := globalBlock(admin, ftQuietAdmin) + fmt.Sprintf(`
http://127.0.0.1:%d {
	shardcache * %s {
		memory 64MiB
	}
}

http://127.0.0.1:%d {
	root * %s
	file_server
}
`, scPort, root, fsPort, root)
	n := startCaddy(t, cf)
	waitPrimed(n, root)
	sc, fs := fmt.Sprintf("http://127.0.0.1:%d", scPort), fmt.Sprintf("http://127.0.0.1:%d", fsPort)

	raw := func(base, target string, headers ...string) (*response, time.Duration, error) {
		req, err := http.NewRequest(http.MethodGet, base+"/", nil)
		if err != nil {
			return nil, 0, err
		}
		for _, h := range headers {
			k, v, _ := strings.Cut(h, ":")
			req.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
		}
		began := time.Now()
		resp, err := doRaw(req, target)
		if err != nil {
			return nil, time.Since(began), err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		took := time.Since(began)
		if err != nil {
			return nil, took, err
		}
		return &response{proto: resp.Proto, status: resp.StatusCode, header: resp.Header, body: body}, took, nil
	}

	t.Run("traversal", func(t *testing.T) {
		targets := []string{
			"/../canary.txt", "/../../canary.txt", "/../../../canary.txt", "/../../../../canary.txt",
			"/%2e%2e/canary.txt", "/%2E%2E/canary.txt", "/%2e%2e%2fcanary.txt", "/%2E%2E%2Fcanary.txt",
			"/..%2fcanary.txt", "/..%2Fcanary.txt", "/..%5ccanary.txt", "/..%5Ccanary.txt", "/..%5c..%5ccanary.txt",
			"/%2e%2e%5ccanary.txt", "/%252e%252e/canary.txt", "/%252e%252e%252fcanary.txt", "/%25%32%65%25%32%65/canary.txt",
			"/%c0%ae%c0%ae/canary.txt", "/%c0%ae%c0%ae%c0%afcanary.txt", "/%e0%80%ae%e0%80%ae/canary.txt", "/%c1%9c..%c1%9ccanary.txt",
			"/..\\canary.txt", "/\\..\\canary.txt", "/..\\..\\canary.txt", "\\..\\canary.txt",
			"/%00/../canary.txt", "/canary.txt%00", "/.%00./canary.txt", "/%00",
			"/a/../../canary.txt", "/./.././canary.txt", "//../canary.txt", "///..//..//canary.txt",
			"/..;/canary.txt", "/.../canary.txt", "/dir/../../canary.txt", "/dir/..%2f..%2fcanary.txt",
			"/%2e%2e", "/%2e%2e/", "/..", "/../",
			"/dir%2f..%2f..%2fcanary.txt", "/..%u2216canary.txt", "/%uff0e%uff0e/canary.txt",
			"http://" + strings.TrimPrefix(sc, "http://") + "/../canary.txt",
			"/..a.txt", "/a..b.txt", "/dir/..%255c.tx",
		}
		for _, target := range targets {
			for _, side := range []struct{ name, base string }{{"shardcache", sc}, {"file_server", fs}} {
				target := target
				if strings.HasPrefix(target, "http://") && side.name == "file_server" {
					target = "http://" + strings.TrimPrefix(fs, "http://") + "/../canary.txt"
				}
				r, took, err := raw(side.base, target)
				if err != nil {
					t.Logf("%-10s GET %s: %v", side.name, target, err)
					continue
				}
				if bytes.Contains(r.body, canary) {
					t.Errorf("%s: GET %s served the canary from outside the root (%d)", side.name, target, r.status)
				}
				if side.name == "shardcache" {
					if r.status >= 500 {
						t.Errorf("shardcache: GET %s: %d %s; want no 5xx", target, r.status, clusterPreview(r.body))
					}
					if took > 2*time.Second {
						t.Errorf("shardcache: GET %s took %s", target, took.Round(time.Millisecond))
					}
				}
				if side.name == "shardcache" {
					fr, _, ferr := raw(fs, strings.ReplaceAll(target, strings.TrimPrefix(sc, "http://"), strings.TrimPrefix(fs, "http://")))
					fst := "error"
					if ferr == nil {
						fst = fmt.Sprint(fr.status)
					}
					t.Logf("GET %-45q shardcache %d (%d bytes), file_server %s", target, r.status, len(r.body), fst)
				}
			}
		}
	})

	t.Run("long_paths", func(t *testing.T) {
		for _, n := range []int{8 << 10, 64 << 10, 1100 << 10} {
			target := "/" + strings.Repeat("a", n)
			for _, side := range []struct{ name, base string }{{"shardcache", sc}, {"file_server", fs}} {
				r, took, err := raw(side.base, target)
				if err != nil {
					t.Logf("%s: GET of a %d-byte path: %v (after %s)", side.name, n, err, took.Round(time.Millisecond))
					continue
				}
				t.Logf("%s: GET of a %d-byte path: %d in %s", side.name, n, r.status, took.Round(time.Millisecond))
				if side.name == "shardcache" {
					switch r.status {
					case 400, 404, 414, 431:
					default:
						t.Errorf("shardcache: GET of a %d-byte path: %d; want 400, 404, 414 or 431", n, r.status)
					}
					if took > 2*time.Second {
						t.Errorf("shardcache: GET of a %d-byte path took %s", n, took.Round(time.Millisecond))
					}
				}
			}
		}
		// And a long path of real segments that climbs out.
		target := strings.Repeat("/dir/..", 5000) + "/../canary.txt"
		if r, _, err := raw(sc, target); err == nil && bytes.Contains(r.body, canary) {
			t.Errorf("shardcache: a %d-byte climbing path served the canary", len(target))
		}
	})

	// compare sends the same request to both and wants the same status
	// (and for 2xx the same Content-Range and bytes, multipart boundaries
	// aside).
	compare := func(t *testing.T, what string, headers ...string) {
		t.Helper()
		s, stook, serr := raw(sc, "/r.bin", headers...)
		f, _, ferr := raw(fs, "/r.bin", headers...)
		if serr != nil || ferr != nil {
			t.Errorf("%s: shardcache %v, file_server %v", what, serr, ferr)
			return
		}
		if stook > 2*time.Second {
			t.Errorf("%s: shardcache took %s", what, stook.Round(time.Millisecond))
		}
		sb, sh := normaliseMultipart(s)
		fb, fh := normaliseMultipart(f)
		if s.status != f.status || sh.Get("Content-Range") != fh.Get("Content-Range") ||
			(s.status < 300 && !bytes.Equal(sb, fb)) || s.status >= 500 {
			t.Errorf("%s: shardcache %d (Content-Range %q, %d bytes), file_server %d (Content-Range %q, %d bytes)",
				what, s.status, sh.Get("Content-Range"), len(sb), f.status, fh.Get("Content-Range"), len(fb))
		} else {
			t.Logf("%-40s both %d, %d bytes, shardcache in %s", what, s.status, len(sb), stook.Round(time.Millisecond))
		}
	}

	t.Run("range", func(t *testing.T) {
		many := func(n int, f func(i int) string) string {
			parts := make([]string, n)
			for i := range parts {
				parts[i] = f(i)
			}
			return "bytes=" + strings.Join(parts, ",")
		}
		cases := map[string]string{
			"1000 disjoint ranges":      many(1000, func(i int) string { return fmt.Sprintf("%d-%d", i*10, i*10) }),
			"1000 ranges of all of it":  many(1000, func(int) string { return "0-" }),
			"5000 one-byte ranges":      many(5000, func(i int) string { return fmt.Sprintf("%d-%d", i, i) }),
			"overlapping 0-5,3-8":       "bytes=0-5,3-8",
			"overlapping 0-9999,0-9999": "bytes=0-9999,0-9999",
			"reversed 9000-9999,0-10":   "bytes=9000-9999,0-10",
			"huge end":                  "bytes=0-99999999999999999999",
			"huge start":                "bytes=99999999999-",
			"huge suffix":               "bytes=-99999999999999999999",
			"int64 max":                 "bytes=9223372036854775807-",
			"end past the size":         "bytes=9990-20000",
			"suffix 0":                  "bytes=-0",
			"bytes=--1":                 "bytes=--1",
			"bytes=5-1":                 "bytes=5-1",
			"items=0-1":                 "items=0-1",
			"bytes=":                    "bytes=",
			"bytes=-":                   "bytes=-",
			"bytes=,":                   "bytes=,",
			"bytes=0-1,,,":              "bytes=0-1,,,",
			"bytes= 0-1":                "bytes= 0-1",
			"bytes=0x10-0x20":           "bytes=0x10-0x20",
			"bytes=1-2-3":               "bytes=1-2-3",
			"bytes=+1-2":                "bytes=+1-2",
			"bytes=10000-":              "bytes=10000-",
			"bytes=0-0,-1":              "bytes=0-0,-1",
			"garbage":                   "garbage",
			"bytes=a-b":                 "bytes=a-b",
			"multi with one bad":        "bytes=0-1,x-y",
		}
		for what, rng := range cases {
			compare(t, what, "Range: "+rng)
		}
	})

	t.Run("if_headers", func(t *testing.T) {
		var etags []string
		for i := 0; i < 2000; i++ {
			etags = append(etags, fmt.Sprintf(`"%d"`, i))
		}
		cases := [][]string{
			{"If-None-Match: garbage"},
			{`If-None-Match: "`},
			{"If-None-Match: W/"},
			{"If-None-Match: ,,,,"},
			{"If-None-Match: " + strings.Join(etags, ", ")},
			{"If-Modified-Since: garbage"},
			{"If-Modified-Since: Mon, 99 Foo 9999 99:99:99 GMT"},
			{"If-Modified-Since: Mon, 01 Jan 1900 00:00:00 GMT"},
			{"If-Modified-Since: Fri, 01 Jan 9999 00:00:00 GMT"},
			{"If-Match: garbage"},
			{"If-Match: *"},
			{"If-Match: " + strings.Join(etags, ", ")},
			{"If-Unmodified-Since: garbage"},
			{"If-Unmodified-Since: Mon, 01 Jan 1900 00:00:00 GMT"},
			{"If-Range: garbage", "Range: bytes=0-9"},
			{"If-Range: Mon, 01 Jan 1900 00:00:00 GMT", "Range: bytes=0-9"},
			{`If-Range: W/"x"`, "Range: bytes=0-9"},
			{"If-Range: garbage"},
			{"If-None-Match: garbage", "If-Modified-Since: garbage", "If-Match: garbage", "If-Unmodified-Since: garbage", "If-Range: garbage", "Range: bytes=0-9"},
		}
		for _, hs := range cases {
			what := strings.Join(hs, "; ")
			if len(what) > 60 {
				what = what[:60] + "..."
			}
			compare(t, what, hs...)
		}
	})
}
