package shard

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"
)

// randomBytes returns n reproducible pseudo-random bytes.
func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// chunked splits b the way the store holds it.
func chunked(b []byte) Chunks {
	c := newChunks(int64(len(b)))
	for i := range c {
		copy(c[i], b[i*ChunkSize:])
	}
	return c
}

func TestChunksGeometry(t *testing.T) {
	for _, tc := range []struct {
		size   int64
		chunks int
		last   int64
	}{
		{0, 0, 0},
		{1, 1, 1},
		{ChunkSize, 1, ChunkSize},
		{ChunkSize + 1, 2, 1},
		{3*ChunkSize - 7, 3, ChunkSize - 7},
	} {
		if got := NumChunks(tc.size); got != tc.chunks {
			t.Errorf("NumChunks(%d) = %d; want %d", tc.size, got, tc.chunks)
		}
		c := newChunks(tc.size)
		if len(c) != tc.chunks || c.Len() != tc.size {
			t.Errorf("newChunks(%d): %d chunks, Len %d; want %d, %d", tc.size, len(c), c.Len(), tc.chunks, tc.size)
		}
		var sum int64
		for i := range tc.chunks {
			off, n := ChunkRange(tc.size, i)
			if off != sum || n != int64(len(c[i])) {
				t.Errorf("ChunkRange(%d, %d) = %d, %d; want %d, %d", tc.size, i, off, n, sum, len(c[i]))
			}
			if i < tc.chunks-1 && n != ChunkSize || i == tc.chunks-1 && n != tc.last {
				t.Errorf("chunk %d of %d bytes: %d bytes", i, tc.size, n)
			}
			sum += n
		}
	}
}

func TestChunksReadSliceSeek(t *testing.T) {
	want := randomBytes(2*ChunkSize+12345, 1)
	c := chunked(want)

	// Slices inside one chunk are the chunk's own memory; across chunks,
	// copies; both the right bytes.
	for _, r := range [][2]int64{
		{0, ChunkSize}, {ChunkSize, ChunkSize}, {2 * ChunkSize, 12345}, {10, 100},
		{ChunkSize - 10, 20}, {ChunkSize - 1, ChunkSize + 2}, {0, int64(len(want))},
	} {
		got := c.Slice(r[0], r[1])
		if !bytes.Equal(got, want[r[0]:r[0]+r[1]]) {
			t.Fatalf("Slice(%d, %d): wrong bytes", r[0], r[1])
		}
		own := r[0]/ChunkSize == (r[0]+r[1]-1)/ChunkSize
		if shared := &got[0] == &c[r[0]/ChunkSize][r[0]%ChunkSize]; shared != own {
			t.Errorf("Slice(%d, %d) shares memory: %v; want %v", r[0], r[1], shared, own)
		}
	}

	rd := NewChunksReader(c)
	if all, err := io.ReadAll(rd); err != nil || !bytes.Equal(all, want) {
		t.Fatalf("ReadAll: %d bytes, %v; want %d bytes", len(all), err, len(want))
	}
	// Seek then read across a chunk boundary, as ServeContent does for a
	// Range.
	if _, err := rd.Seek(ChunkSize-3, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 10)
	if _, err := io.ReadFull(rd, p); err != nil || !bytes.Equal(p, want[ChunkSize-3:ChunkSize+7]) {
		t.Fatalf("read across a boundary: %v", err)
	}
	if n, _ := rd.Seek(0, io.SeekEnd); n != int64(len(want)) {
		t.Fatalf("Seek(0, End) = %d; want %d", n, len(want))
	}
	if _, err := rd.Seek(-1, io.SeekStart); err == nil {
		t.Fatal("seek before start: no error")
	}
	// WriteTo from the middle writes the rest, straight from the chunks.
	rd.Seek(5, io.SeekStart)
	var buf bytes.Buffer
	if n, err := rd.WriteTo(&buf); err != nil || n != int64(len(want)-5) || !bytes.Equal(buf.Bytes(), want[5:]) {
		t.Fatalf("WriteTo: %d, %v", n, err)
	}
	if n, err := rd.Read(p); n != 0 || err != io.EOF {
		t.Fatalf("Read at the end = %d, %v; want 0, EOF", n, err)
	}
}

// A file larger than ChunkSize is primed into chunks (never one slice of
// its size), read back byte for byte, and counted once against the budget.
func TestPrimeLargeInChunks(t *testing.T) {
	big := randomBytes(2*ChunkSize+777, 2)
	exact := randomBytes(ChunkSize, 3)
	s := newStore(t, Config{}, map[string]string{"big.bin": string(big), "exact.bin": string(exact), "small.txt": "hi"})
	startReady(t, s)

	it := mustLookup(t, s, "/big.bin", string(big))
	if it.Body() != nil || len(it.Chunks()) != 3 || it.Chunks().Len() != int64(len(big)) {
		t.Fatalf("big item: Body %d bytes, %d chunks of %d bytes; want none, 3 of %d", len(it.Body()), len(it.Chunks()), it.Chunks().Len(), len(big))
	}
	for i, ch := range it.Chunks() {
		if cap(ch) > ChunkSize {
			t.Errorf("chunk %d has capacity %d > ChunkSize", i, cap(ch))
		}
	}
	if !it.Resident() {
		t.Error("chunked item not Resident")
	}
	ex := mustLookup(t, s, "/exact.bin", string(exact))
	if ex.Chunks() != nil || len(ex.Body()) != ChunkSize {
		t.Errorf("item of exactly ChunkSize: %d chunks, Body %d; want one Body", len(ex.Chunks()), len(ex.Body()))
	}
	if got, want := s.Stats().ResidentBytes, int64(len(big)+len(exact)+2); got != want {
		t.Errorf("ResidentBytes = %d; want %d", got, want)
	}
}

// Under a budget too small for a chunked file, it is not held, and served
// from storage.
func TestLargeOverBudget(t *testing.T) {
	big := randomBytes(ChunkSize+1, 4)
	s := newStore(t, Config{Memory: ChunkSize}, map[string]string{"big.bin": string(big)})
	startReady(t, s)
	it := mustLookup(t, s, "/big.bin", string(big))
	if it.Resident() || it.Chunks() != nil {
		t.Fatalf("over-budget item resident: %d chunks", len(it.Chunks()))
	}
	if got := s.Stats().ResidentBytes; got != 0 {
		t.Errorf("ResidentBytes = %d; want 0", got)
	}
}

// A precompressed sibling larger than a chunk is held in chunks too, as the
// item's variant, and reads back byte for byte.
func TestLargeVariantInChunks(t *testing.T) {
	big := randomBytes(ChunkSize+100, 5)
	gz := randomBytes(ChunkSize+50, 6) // stands for the compressed bytes
	s := newStore(t, Config{Precompressed: []string{"gzip"}}, map[string]string{"big.txt": string(big), "big.txt.gz": string(gz)})
	startReady(t, s)
	it := mustLookup(t, s, "/big.txt", string(big))
	if len(it.Variants()) != 1 || it.Variants()[0].Encoding != "gzip" {
		t.Fatalf("variants %+v; want one gzip", it.Variants())
	}
	if v := it.Variants()[0]; v.Body != nil || len(v.Chunks) != 2 || v.Chunks.Len() != int64(len(gz)) {
		t.Fatalf("gzip variant: Body %d bytes, %d chunks (%d bytes); want 2 chunks of %d bytes", len(v.Body), len(v.Chunks), v.Chunks.Len(), len(gz))
	}
	if got := body(t, s, it, "gzip"); string(got) != string(gz) {
		t.Fatalf("gzip variant reads back %d bytes, not its own", len(got))
	}
}
