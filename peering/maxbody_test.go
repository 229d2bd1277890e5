package peering

import (
	"context"
	"errors"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/quic-go/quic-go"
)

// liar is a peer named n1 with the cluster's credentials that answers
// every GET for "/<n>" with a RESPONSE announcing n bytes, then ends the
// stream without sending any.
func liar(t *testing.T) string {
	t.Helper()
	ln, err := quic.Listen(bindLoopback(t), credsFor(t, testSecret, "n1").ServerConfig(), quicConfig(DefaultIdleTimeout))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			go func() {
				defer conn.CloseWithError(0, "")
				ctl, err := conn.AcceptStream(ctx)
				if err != nil {
					return
				}
				if _, _, err := readFrame(ctl, nil); err != nil { // the dialer's HELLO
					return
				}
				b, _ := appendHello(nil, &hello{Name: "n1", Ready: true})
				ctl.Write(appendTOCEnd(b))
				for {
					str, err := conn.AcceptStream(ctx)
					if err != nil {
						return
					}
					_, p, err := readFrame(str, nil)
					if err != nil {
						return
					}
					req, _ := decodeGet(p)
					size, _ := strconv.ParseInt(strings.TrimPrefix(req.Path, "/"), 10, 64)
					b, _ := appendResponse(nil, ErrCodeNoError, &Meta{Path: req.Path, Size: size})
					writeFin(str, b)
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// TestFetchClaimedSize: a peer that announces a huge body cannot make
// Fetch allocate more than MaxBodySize (default: one chunk and 64 KiB):
// an announced size over the cap is refused with ErrTooLarge before any
// allocation, and one at the cap costs the cap, not more. With the old
// default cap (256 MiB) the same lie made Fetch allocate the claimed
// size. Not parallel: it measures the process's allocations.
func TestFetchClaimedSize(t *testing.T) {
	addr := liar(t)
	fetchFrom := func(maxBody int64) (*testNode, func(size int64) error) {
		n := listenNode(t, "n2", bindLoopback(t), []Peer{{"n1", addr}}, func(c *Config) { c.MaxBodySize = maxBody })
		waitPeer(t, n.Node, "n1", func(p PeerState) bool { return p.Up })
		return n, func(size int64) error {
			_, _, err := n.Fetch(context.Background(), "n1", Request{Group: "g", Path: "/" + strconv.FormatInt(size, 10)})
			return err
		}
	}
	n, fetch := fetchFrom(0)
	if n.cfg.MaxBodySize != DefaultMaxBodySize || DefaultMaxBodySize != 4<<20+64<<10 {
		t.Fatalf("MaxBodySize %d", n.cfg.MaxBodySize)
	}
	// What a fetch costs besides the body, in this process: the
	// client's stream and header frame, and the liar's side of the
	// stream (measured: 55-80 KiB with -race).
	const slack = 256 << 10
	for _, claim := range []int64{maxContentSize, 1 << 40, 256 << 20, DefaultMaxBodySize + 1} {
		var err error
		per := allocBytes(20, func() { err = fetch(claim) })
		t.Logf("announced %d bytes: %d bytes allocated per fetch (%v)", claim, per, err)
		if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "over the limit") {
			t.Errorf("announced %d bytes: %v, want ErrTooLarge", claim, err)
		}
		if per > slack {
			t.Errorf("announced %d bytes: %d bytes allocated per fetch", claim, per)
		}
	}
	// At the cap: the buffer is allocated, the body never comes.
	var err error
	per := allocBytes(5, func() { err = fetch(DefaultMaxBodySize) })
	t.Logf("announced %d bytes (the cap): %d bytes allocated per fetch (%v)", DefaultMaxBodySize, per, err)
	if err == nil || errors.Is(err, ErrTooLarge) {
		t.Errorf("announced the cap, sent nothing: %v", err)
	}
	if per > DefaultMaxBodySize+slack {
		t.Errorf("announced the cap: %d bytes allocated per fetch", per)
	}
	// The connection still serves after the refusals.
	if p := peerState(t, n.Node, "n1"); !p.Up {
		t.Errorf("peer down after refused responses: %+v", p)
	}
	n.Close()

	// The old default (256 MiB): the claim is allocated.
	_, fetch = fetchFrom(256 << 20)
	per = allocBytes(1, func() { err = fetch(64 << 20) })
	t.Logf("with a 256 MiB cap, announced 64 MiB: %d bytes allocated (%v)", per, err)
	if per < 64<<20 {
		t.Errorf("with a 256 MiB cap, announced 64 MiB: %d bytes allocated", per)
	}
	runtime.GC()
}
