package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestCaddyfileErrors runs `caddy adapt` on Caddyfiles with mistakes in the
// shardcache directive: each must fail with a message that names the
// offending token and its line.
func TestCaddyfileErrors(t *testing.T) {
	needCaddy(t)
	for _, tc := range []struct {
		name  string
		block string // the lines inside the site block; line 1 of the file is the site address
		token string // must appear in the message
		lines []int  // the message must name one of these lines
	}{
		{"unknown subdirective", "shardcache {\n\troot /srv\n\tcolour blue\n}", "colour", []int{4}},
		{"memory bad size", "shardcache {\n\troot /srv\n\tmemory lots\n}", "lots", []int{4}},
		{"memory bad unit", "shardcache {\n\troot /srv\n\tmemory 12XB\n}", "12XB", []int{4}},
		{"memory zero", "shardcache {\n\troot /srv\n\tmemory 0\n}", "memory", []int{4}},
		{"memory negative", "shardcache {\n\troot /srv\n\tmemory -1GiB\n}", "-1GiB", []int{4}},
		{"memory missing size", "shardcache {\n\troot /srv\n\tmemory\n}", "memory", []int{4}},
		{"memory extra arg", "shardcache {\n\troot /srv\n\tmemory 1GiB 2GiB\n}", "2GiB", []int{4}},
		{"precompressed unknown encoding", "shardcache {\n\troot /srv\n\tprecompressed br deflate\n}", "deflate", []int{4}},
		{"precompressed nothing", "shardcache {\n\troot /srv\n\tprecompressed\n}", "precompressed", []int{4}},
		{"extra directive arg", "shardcache * /srv /other", "/other", []int{2}},
		{"extra directive arg with block", "shardcache /path/* /srv /other {\n\tmemory 1GiB\n}", "/other", []int{2}},
		{"root extra arg", "shardcache {\n\troot /srv /other\n}", "/other", []int{3}},
		{"root twice", "shardcache * /srv {\n\troot /other\n}", "root", []int{3}},
		{"root without path", "shardcache {\n\troot\n}", "root", []int{3}},
		{"pass_thru arg", "shardcache {\n\troot /srv\n\tpass_thru yes\n}", "yes", []int{4}},
		{"index nothing", "shardcache {\n\troot /srv\n\tindex\n}", "index", []int{4}},
		{"subdirective twice", "shardcache {\n\troot /srv\n\tmemory 1GiB\n\tmemory 2GiB\n}", "memory", []int{5}},
		{"missing root", "shardcache {\n\tmemory 1GiB\n}", "root", []int{2, 3, 4}},
		{"missing root, no block", "shardcache", "root", []int{2}},
		// A lone path is a path matcher (as for file_server and root), not
		// the root: the root is then missing.
		{"root written as the matcher", "shardcache /srv/www {\n\tmemory 1GiB\n}", "root", []int{2, 3, 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cf := filepath.Join(t.TempDir(), "Caddyfile")
			src := "http://127.0.0.1:9 {\n" + indent(tc.block) + "\n}\n"
			if err := os.WriteFile(cf, []byte(src), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := runCaddy(t, 30*time.Second, "adapt", "--config", cf, "--adapter", "caddyfile")
			if err == nil {
				t.Fatalf("caddy adapt succeeded on\n%s\noutput: %.300s", src, out)
			}
			msg := lastErrorLine(out)
			if !strings.Contains(msg, tc.token) {
				t.Errorf("the message does not name %q:\n%s", tc.token, msg)
			}
			ok := false
			for _, l := range tc.lines {
				if regexp.MustCompile(fmt.Sprintf(`Caddyfile:%d\b`, l)).MatchString(msg) {
					ok = true
				}
			}
			if !ok {
				t.Errorf("the message does not name line %v of the Caddyfile:\n%s", tc.lines, msg)
			}
		})
	}
}

// TestValidateErrors runs `caddy validate` on configs that parse but are
// wrong: each must fail and say why.
func TestValidateErrors(t *testing.T) {
	needCaddy(t)
	for _, tc := range []struct {
		name, block, want string
	}{
		{"duplicate encoding", "shardcache {\n\troot /srv\n\tprecompressed gzip gzip\n}", "gzip"},
		{"index with a slash", "shardcache {\n\troot /srv\n\tindex a/index.html\n}", "a/index.html"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cf := filepath.Join(t.TempDir(), "Caddyfile")
			admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
			src := globalBlock(admin) + "http://127.0.0.1:9 {\n" + indent(tc.block) + "\n}\n"
			if err := os.WriteFile(cf, []byte(src), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := runCaddy(t, 30*time.Second, "validate", "--config", cf, "--adapter", "caddyfile")
			if err == nil {
				t.Fatalf("caddy validate succeeded on\n%s", src)
			}
			if msg := lastErrorLine(out); !strings.Contains(msg, tc.want) {
				t.Errorf("the message does not name %q:\n%s", tc.want, msg)
			}
		})
	}
}

// indent indents every line of s by one tab.
func indent(s string) string {
	return "\t" + strings.ReplaceAll(s, "\n", "\n\t")
}

// lastErrorLine returns the "Error: ..." line of a failed caddy command, or
// all of its output when there is none.
func lastErrorLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "Error:") {
			return lines[i]
		}
	}
	return out
}
