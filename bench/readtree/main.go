//go:build unix

// Command readtree reads every regular file of a tree once, with p threads
// (open, fstat, read, close: the system calls a store's priming makes per
// file, without the walk's watches and stats, the hashing or the store):
// a floor for what reading the tree costs on this machine. Run it after
// dropping the page cache to time a cold start:
//
//	sync; echo 3 > /proc/sys/vm/drop_caches
//	go run ./bench/readtree -dir /tmp/scale1m -p 8
//
// It prints one line of JSON: files, bytes, seconds listing the
// directories, seconds reading the files, files per second, and the CPU
// time the process used (user, system).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	dir := flag.String("dir", "", "the tree's root")
	p := flag.Int("p", 8, "threads reading files")
	flag.Parse()
	if *dir == "" || *p < 1 {
		flag.Usage()
		os.Exit(2)
	}

	t0 := time.Now()
	var paths []string
	err := filepath.WalkDir(*dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			paths = append(paths, path)
		}
		return nil
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "readtree:", err)
		os.Exit(1)
	}
	listed := time.Since(t0)

	t1 := time.Now()
	var next, bytes, failed atomic.Int64
	var wg sync.WaitGroup
	for range *p {
		wg.Go(func() {
			buf := make([]byte, 1<<20)
			for {
				i := next.Add(1) - 1
				if i >= int64(len(paths)) {
					return
				}
				n, err := readFile(paths[i], buf)
				if err != nil {
					failed.Add(1)
					continue
				}
				bytes.Add(n)
			}
		})
	}
	wg.Wait()
	read := time.Since(t1)
	if failed.Load() > 0 {
		fmt.Fprintf(os.Stderr, "readtree: %d files could not be read\n", failed.Load())
		os.Exit(1)
	}

	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	secs := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	out, _ := json.Marshal(map[string]any{
		"files":        len(paths),
		"bytes":        bytes.Load(),
		"threads":      *p,
		"list_s":       listed.Seconds(),
		"read_s":       read.Seconds(),
		"files_per_s":  float64(len(paths)) / read.Seconds(),
		"cpu_user_s":   secs(ru.Utime),
		"cpu_system_s": secs(ru.Stime),
	})
	fmt.Println(string(out))
}

// readFile reads the file at path with raw system calls: as many bytes as
// fstat says it has (one read for a file smaller than buf, as a store's
// priming reads it).
func readFile(path string, buf []byte) (int64, error) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return 0, err
	}
	var total int64
	for total < st.Size {
		n, err := syscall.Read(fd, buf[:min(int64(len(buf)), st.Size-total)])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return total, err
		}
		if n == 0 {
			return total, fmt.Errorf("%s: %d bytes, fstat said %d", path, total, st.Size)
		}
		total += int64(n)
	}
	return total, nil
}
