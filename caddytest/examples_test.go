package integration

import (
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the examples' Caddyfile.json from their Caddyfile")

// TestExamplesAdapt adapts every examples/**/Caddyfile (and *.Caddyfile) with the built binary
// and compares the result, as JSON values, with its sibling Caddyfile.json.
// With -update it rewrites the JSON files instead.
func TestExamplesAdapt(t *testing.T) {
	needCaddy(t)
	var found []string
	err := filepath.WalkDir(filepath.Join(repoRoot, "examples"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (d.Name() == "Caddyfile" || strings.HasSuffix(d.Name(), ".Caddyfile")) {
			found = append(found, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) == 0 {
		t.Fatal("no examples/**/Caddyfile found")
	}
	for _, cf := range found {
		rel, _ := filepath.Rel(repoRoot, cf)
		t.Run(filepath.ToSlash(rel), func(t *testing.T) {
			stdout, stderr, err := runCaddySplit(t, 30*time.Second, "adapt", "--config", rel, "--adapter", "caddyfile", "--pretty")
			if err != nil {
				t.Fatalf("caddy adapt %s: %v\n%s", rel, err, stderr)
			}
			if strings.Contains(stderr, "not formatted") {
				t.Errorf("%s is not formatted (run caddy fmt --overwrite): %s", rel, stderr)
			}
			jsonPath := cf + ".json"
			if *update {
				if err := os.WriteFile(jsonPath, []byte(stdout), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			wantRaw, err := os.ReadFile(jsonPath)
			if err != nil {
				t.Fatalf("%v (create it with -update)", err)
			}
			var got, want any
			if err := json.Unmarshal([]byte(stdout), &got); err != nil {
				t.Fatalf("caddy adapt output is not JSON: %v\n%s", err, stdout)
			}
			if err := json.Unmarshal(wantRaw, &want); err != nil {
				t.Fatalf("%s: %v", jsonPath, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s adapts to\n%s\nwhich differs from %s:\n%s", rel, stdout, filepath.Base(jsonPath), wantRaw)
			}
		})
	}
}

// TestExampleSingle runs examples/single from the repository root, as the
// README does, with its site address and admin endpoint moved to free
// ports, and fetches its pages.
func TestExampleSingle(t *testing.T) {
	needCaddy(t)
	raw, err := os.ReadFile(filepath.Join(repoRoot, "examples", "single", "Caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	cf := string(raw)
	if !strings.Contains(cf, "http://127.0.0.1:8080") {
		t.Fatalf("examples/single/Caddyfile no longer serves http://127.0.0.1:8080; update this test")
	}
	port := freePort(t)
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cf = strings.ReplaceAll(cf, "http://127.0.0.1:8080", fmt.Sprintf("http://127.0.0.1:%d", port))
	if strings.Contains(cf, "\nadmin") || strings.HasPrefix(strings.TrimSpace(stripComments(cf)), "{") {
		t.Fatalf("examples/single/Caddyfile has a global block; teach this test to move its admin endpoint")
	}
	n := startCaddy(t, globalBlock(admin)+cf)
	site := filepath.Join(repoRoot, "examples", "single", "site")
	waitPrimed(n, site)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)

	index, err := os.ReadFile(filepath.Join(site, "index.html"))
	if err != nil {
		t.Fatal(err)
	}
	r := get(t, base, "/")
	if r.status != 200 || string(r.body) != string(index) || !strings.HasPrefix(r.header.Get("Content-Type"), "text/html") {
		t.Errorf("GET /: %d %s %s, want index.html", r.status, r.header.Get("Content-Type"), preview(r.body))
	}
	// Every file of the site is served (sidecars through their file).
	err = filepath.WalkDir(site, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(p, ".gz") {
			return err
		}
		want, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(site, p)
		r := get(t, base, "/"+filepath.ToSlash(rel))
		if r.status != 200 || string(r.body) != string(want) {
			t.Errorf("GET /%s: %d, %d bytes; want 200 and its %d bytes", rel, r.status, len(r.body), len(want))
		}
		if gzWant, err := os.ReadFile(p + ".gz"); err == nil {
			r := get(t, base, "/"+filepath.ToSlash(rel), "Accept-Encoding: gzip")
			if r.status != 200 || string(r.body) != string(gzWant) || r.header.Get("Content-Encoding") != "gzip" {
				t.Errorf("GET /%s with Accept-Encoding: gzip: %d %q, %d bytes; want its .gz sidecar", rel, r.status, r.header.Get("Content-Encoding"), len(r.body))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// stripComments removes Caddyfile comment lines.
func stripComments(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
