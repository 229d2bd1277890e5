//go:build !linux

package shard

import (
	"errors"
	"io"
)

// Without memfd_create, bodies live in the Go heap (arena.go).
const arenasOn = false

type arenaSys struct{}

func newArena(int64) (*arena, error) { return nil, errors.New("shard: no arenas on this platform") }

func (arenaSys) discard(off, n int64) {}

func (arenaSys) prefault(off, n int64) {}

// A BodyFile sends a body from its arena with sendfile(2); never on this
// platform (see arena_linux.go).
type BodyFile struct{}

// OpenBody reports false: bodies are not in arenas here.
func OpenBody(b []byte, chunk int64) (*BodyFile, bool) { return nil, false }

// LimitedReader is never called (OpenBody returns no BodyFile).
func (bf *BodyFile) LimitedReader() *io.LimitedReader { return nil }

func (bf *BodyFile) Read(p []byte) (int, error) { return 0, io.EOF }

// Close does nothing.
func (bf *BodyFile) Close() error { return nil }
