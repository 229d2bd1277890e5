package shardcache

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/shardcache/caddy-shardcache/shard"
)

// arenaItems primes a store with files of the given sizes (each byte
// distinct per file, so that bytes of a neighbour are told apart) and
// returns their items.
func arenaItems(t *testing.T, sizes []int) []*shard.Item {
	t.Helper()
	dir := t.TempDir()
	for i, n := range sizes {
		b := bytes.Repeat([]byte{byte('a' + i)}, n)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d", i)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	st, err := shard.New(shard.Config{Root: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	st.Start()
	deadline := time.Now().Add(5 * time.Second)
	for !st.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("store not ready")
		}
		time.Sleep(5 * time.Millisecond)
	}
	var items []*shard.Item
	for i := range sizes {
		it, _, err := st.Lookup(fmt.Sprintf("/f%d", i))
		if err != nil {
			t.Fatal(err)
		}
		items = append(items, it)
	}
	return items
}

// TestWriteBodySendfile sends arena bodies through writeBody over real
// TCP connections, with net/http's writer alone and behind Caddy's write
// idle timeout (which hands ReadFrom 64 KiB at a time), and reads the raw
// bytes: each response must carry exactly its body (sendfile never sends a
// byte past it: the neighbours' bytes would follow) and a second response
// on the same connection must parse. Over TLS the body is written from
// memory.
func TestWriteBodySendfile(t *testing.T) {
	if !shard.Arenas().Enabled {
		t.Skip("no arenas on this platform")
	}
	old := sendfileMin
	sendfileMin = 48 << 10
	defer func() { sendfileMin = old }()
	sizes := []int{sendfileMin, 64 << 10, 64<<10 + 1, 64<<10 - 1, 300<<10 + 7, 1 << 20, 1<<20 - 100, 4 << 20, shard.ChunkSize + 3}
	items := arenaItems(t, sizes)
	for _, mode := range []string{"plain", "idle", "idle+sniffer"} {
		idle := mode != "plain"
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			i, _ := strconv.Atoi(r.URL.Query().Get("i"))
			it := items[i]
			if idle {
				w = &caddyhttp.IdleTimeoutWriter{
					ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w},
					Ctrl:                  http.NewResponseController(w),
					Deadline:              caddyhttp.IdleDeadline{Start: time.Now(), Timeout: time.Minute},
				}
			}
			if mode == "idle+sniffer" {
				w = &sniffer{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}}
			}
			w.Header().Set("Content-Length", strconv.FormatInt(it.Size, 10))
			w.WriteHeader(http.StatusOK)
			if it.Chunks() != nil {
				for _, c := range it.Chunks() {
					if writeBody(w, r, c) != nil {
						return
					}
				}
				return
			}
			_ = writeBody(w, r, it.Body())
		}))
		for i, n := range sizes {
			before := shard.Arenas().Sendfiles
			conn, err := net.Dial("tcp", srv.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			// Two requests on one connection: bytes past the first body
			// would break the second response.
			fmt.Fprintf(conn, "GET /?i=%d HTTP/1.1\r\nHost: x\r\n\r\nGET /?i=%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", i, i)
			br := bufio.NewReader(conn)
			for k := range 2 {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("%s: size %d response %d: %v", mode, n, k, err)
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || len(b) != n || !bytes.Equal(b, bytes.Repeat([]byte{byte('a' + i)}, n)) {
					t.Fatalf("%s: size %d response %d: %d bytes (%v), or wrong ones", mode, n, k, len(b), err)
				}
			}
			if rest, _ := io.ReadAll(br); len(rest) != 0 {
				t.Fatalf("%s: size %d: %d bytes after the responses", mode, n, len(rest))
			}
			conn.Close()
			// Behind the idle timeout's writer, only whole 64 KiB pieces
			// can go by sendfile.
			const chunk = caddyhttp.DefaultMaxWriteChunk
			// A chunk at least goes with the headers, from memory.
			want := !idle || n-n%chunk-chunk >= chunk
			if mode == "idle+sniffer" {
				// Its 512 bytes leave less than a chunk of a 128 KiB body.
				want = n-n%chunk-chunk-512 >= chunk
			}
			if got := shard.Arenas().Sendfiles - before; (got > 0) != want {
				t.Errorf("%s: size %d: %d sendfiles, want some: %v", mode, n, got, want)
			}
		}
		srv.Close()
	}

	// TLS: written from memory, same bytes.
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.FormatInt(items[1].Size, 10))
		_ = writeBody(w, r, items[1].Body())
	}))
	defer srv.Close()
	before := shard.Arenas().Sendfiles
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(b, items[1].Body()) {
		t.Fatalf("TLS: %d bytes, or wrong ones", len(b))
	}
	if shard.Arenas().Sendfiles != before {
		t.Error("TLS response went through sendfile")
	}
}

// sniffer is a writer like Caddy's encode handler's when it does not
// compress: its ReadFrom first reads up to 512 bytes of the reader itself
// (to decide), writes them, and hands the reader on.
type sniffer struct {
	*caddyhttp.ResponseWriterWrapper
	sniffed bool
}

func (s *sniffer) ReadFrom(r io.Reader) (int64, error) {
	var n int64
	if !s.sniffed {
		s.sniffed = true
		var err error
		n, err = io.Copy(struct{ io.Writer }{s}, io.LimitReader(r, 512))
		if err != nil || n < 512 {
			return n, err
		}
	}
	m, err := s.ResponseWriterWrapper.ReadFrom(r)
	return n + m, err
}
